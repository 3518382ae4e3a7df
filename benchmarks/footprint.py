"""Footprint: resident memory per open handle, import time, and CLI start-up.

- RSS per handle: open many ``AsyncSysGenID`` handles (each reads its page once, so the
  page is resident), and divide the growth of VmRSS by their number.
- Import time: in a fresh interpreter, the wall time of ``import sysgenid_async`` against
  ``import anyio`` alone (which it needs); the interpreters take turns. The package loads a
  public name on first use, so ``from sysgenid_async import watch`` (what a service pays: the
  fd layer and the async handle) is measured too.
- CLI start-up: ``sysgenid-async status`` in a fresh process, against ``python -c pass``.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time

from common import DeviceUnderTest, Figure, Measure, Results, compare_rounds

IMPORT_TIMER = "import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def rss_per_handle(device: DeviceUnderTest, count: int) -> float:
    from sysgenid_async import AsyncSysGenID

    warm = [AsyncSysGenID.open(device.path) for _ in range(8)]  # code paths and caches in
    for handle in warm:
        handle.close()
    gc.collect()
    before = _rss_kib()
    handles = [AsyncSysGenID.open(device.path) for _ in range(count)]
    for handle in handles:
        _ = handle.generation
    after = _rss_kib()
    for handle in handles:
        handle.close()
    return (after - before) * 1024 / count


def _time_import(statement: str) -> float:
    done = subprocess.run([sys.executable, "-c", IMPORT_TIMER.format(statement=statement)],
                          capture_output=True, text=True, check=True)
    return float(done.stdout) * 1000


def _time_command(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True, env=env)
    return (time.perf_counter() - started) * 1000


def run(device: DeviceUnderTest, results: Results, *, rounds: int, handles: int) -> None:
    per_handle = [rss_per_handle(device, handles) for _ in range(rounds)]
    results.measures.append(Measure(
        "footprint", Figure(f"RSS per open handle ({handles} handles, page touched)", "bytes", per_handle),
        target=64 * 1024,
    ))
    for statement, target in (("import sysgenid_async", 1.5), ("from sysgenid_async import watch", None)):
        pairs = []
        for _ in range(rounds):
            pairs.append(([_time_import(statement)], [_time_import("import anyio")]))
        results.comparisons.append(compare_rounds(
            "footprint", statement, "ms", pairs, target=target,
            note="baseline: import anyio alone, in a fresh interpreter",
        ))
    # The CLI's status opens the real device; the simulator lives only in this process, so
    # on it the start-up is measured with --help (the same imports, no device).
    arguments = ["--device", device.path, "status"] if device.kernel else ["--help"]
    env = dict(os.environ)
    pairs = []
    for _ in range(rounds):
        pairs.append((
            [_time_command([sys.executable, "-m", "sysgenid_async", *arguments], env)],
            [_time_command([sys.executable, "-c", "pass"], env)],
        ))
    results.comparisons.append(compare_rounds(
        "footprint", f"CLI start-up: sysgenid-async {arguments[-1]}", "ms", pairs, target=3.0,
        note="baseline: python -c pass (interpreter start-up alone)",
    ))
