"""Fast probe: nanoseconds per read of the generation, and per hot-path check of a
generation-bound value when nothing changed.

Every statement is timed in the same ``timeit`` loop; the loop's own cost (the statement
``pass``) is subtracted, so a figure is what the statement itself costs. The baseline is
``view[0]`` on the device's own mapping (``memoryview(mmap).cast("I")``, a local name).
Statements take turns round by round.
"""

from __future__ import annotations

import sys
import timeit
from typing import Any

from common import DeviceUnderTest, Results, compare_rounds

BASELINE = "view[0]"
# (case, statement, target ratio or None)
CASES = [
    ("Device.generation (property)", "device.generation", 1.6),
    ("AsyncSysGenID.generation", "handle.generation", None),
    ("a null property (CPython's floor for any property)", "null.value", None),
    ("generation-bound value: get = value.get; get()", "get()", 3.0),
    ("generation-bound value: value()", "value()", None),
    ("generation-bound value, shared probe: value()", "shared()", None),
    ("AsyncGenerationBound: await value.get() (no change)", None, None),
]


class _Null:
    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value = 0

    @property
    def value(self) -> int:
        return self._value


def _per_op(statement: str, namespace: dict[str, Any], number: int) -> float:
    return timeit.Timer(statement, globals=namespace).timeit(number) / number * 1e9


def run(device: DeviceUnderTest, results: Results, *, rounds: int, number: int) -> None:
    from sysgenid_async import AsyncSysGenID
    from sysgenid_async.device import Device
    from sysgenid_async.restore import GenerationBound, generation_bound
    from sysgenid_async.restore.probe import close_process_probe

    probe_device = Device.open(device.path, watcher=False)
    handle = AsyncSysGenID.open(device.path, watcher=False)
    value = GenerationBound(object, probe=probe_device)
    shared = generation_bound(object)
    value(), shared()
    view = probe_device.page_view()
    namespace = {"view": view, "device": probe_device, "handle": handle, "null": _Null(),
                 "get": value.get, "value": value, "shared": shared}
    statements = [(case, statement, target) for case, statement, target in CASES if statement]
    timings: dict[str, list[tuple[float, float]]] = {case: [] for case, _, _ in statements}
    try:
        for _ in range(rounds):
            overhead = _per_op("pass", namespace, number)
            base = _per_op(BASELINE, namespace, number) - overhead
            for case, statement, _ in statements:
                timings[case].append((_per_op(statement, namespace, number) - overhead, base))
        timings["AsyncGenerationBound: await value.get() (no change)"] = _async_bound_rounds(
            probe_device, rounds, number // 10)
    finally:
        handle.close()
        probe_device.close()
        close_process_probe()
    for case, _, target in CASES:
        pairs = [([lib], [base]) for lib, base in timings[case]]
        results.comparisons.append(compare_rounds(
            "fast probe", case, "ns", pairs, target=target,
            note=f"baseline: view[0] on the same mapping; loop overhead subtracted; Python {sys.version.split()[0]}",
        ))


def _async_bound_rounds(probe: Any, rounds: int, number: int) -> list[tuple[float, float]]:
    """``await value.get()`` against ``await`` of a coroutine that returns ``view[0]``."""
    import asyncio

    from sysgenid_async.restore import AsyncGenerationBound

    view = probe.page_view()

    async def build() -> object:
        return object()

    async def floor() -> int:
        return view[0]  # type: ignore[no-any-return]

    value = AsyncGenerationBound(build, probe=probe)

    async def loop(function: Any) -> float:
        started = timeit.default_timer()
        for _ in range(number):
            await function()
        return (timeit.default_timer() - started) / number * 1e9

    async def main() -> list[tuple[float, float]]:
        await value.get()
        return [(await loop(value.get), await loop(floor)) for _ in range(rounds)]

    return asyncio.run(main())
