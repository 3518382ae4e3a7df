"""Leaks: 10,000 open/close cycles and 10,000 cancelled waits leave nothing behind.

Measured after a warm-up, on asyncio, uvloop and trio, on each ABI (not again on each
shipped-driver flavour: no quirk touches opening, closing or cancelling): the process's
open descriptors, its threads, the event loop's registered readers (none may be left for
the device's fd; uvloop cannot be asked) and its resident memory (flat within a tolerance: the allocator keeps
what it has, so a few hundred KiB can come and go). The counts go to the report.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable

import anyio
import pytest

from backends import Backend
from sysgenid_async import AsyncSysGenID, open_sysgenid

pytestmark = pytest.mark.once_per_abi

# 10,000 on the simulator (every host Python); 3,000 on the kernel device, where each cycle is a
# syscall under emulation: a leaked file shows in the fd count at once, and 3,000 leaked handles
# would hold 3,000 mapped pages (12 MiB), far above the RSS tolerance.
CYCLES_ON_THE_SIMULATOR = 10_000
CYCLES_ON_THE_KERNEL = 3_000
WARM_UP = 500
RSS_TOLERANCE_KIB = 2048  # a few hundred KiB is noise


def _cycles(backend: Backend) -> int:
    return CYCLES_ON_THE_KERNEL if backend.kernel else CYCLES_ON_THE_SIMULATOR


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _snapshot() -> dict[str, int]:
    gc.collect()
    return {"fds": len(os.listdir("/proc/self/fd")), "threads": threading.active_count(), "rss_kib": _rss_kib()}


def _assert_flat(before: dict[str, int], after: dict[str, int]) -> None:
    # No growth: fewer is fine (an earlier test's idle worker thread may retire meanwhile).
    assert after["fds"] <= before["fds"], "descriptors leaked"
    assert after["threads"] <= before["threads"], "threads left behind"
    assert after["rss_kib"] - before["rss_kib"] < RSS_TOLERANCE_KIB, "resident memory grew"


def _loop_name(anyio_backend: tuple[str, dict[str, object]]) -> str:
    name, options = anyio_backend
    return "uvloop" if options.get("use_uvloop") else name


def _readers(fd: int, anyio_backend_name: str) -> int | None:
    """Readers the running loop has: trio's count of tasks waiting to read (it keeps one
    of its own), or, on asyncio, 1 if ``fd`` is registered (asked by removing it). uvloop
    does not tell (its remove_reader returns None): None."""
    if anyio_backend_name == "trio":
        import trio

        return trio.lowlevel.current_statistics().io_statistics.tasks_waiting_read
    import asyncio

    removed = asyncio.get_running_loop().remove_reader(fd)
    return None if removed is None else int(removed)


@pytest.mark.anyio
async def test_open_close_cycles_leave_nothing(
    backend: Backend, anyio_backend: tuple[str, dict[str, object]], anyio_backend_name: str,
    report_figures: Callable[[dict[str, object]], None],
) -> None:
    async def cycle() -> None:
        async with open_sysgenid(backend.path) as handle:
            assert handle.generation >= 0

    cycles = _cycles(backend)
    for _ in range(WARM_UP):
        await cycle()
    before = _snapshot()
    for _ in range(cycles):
        await cycle()
    after = _snapshot()
    _assert_flat(before, after)
    assert backend.open_files() == 0
    report_figures({"backend": backend.name, "loop": _loop_name(anyio_backend), "cycles": cycles,
                    "before": before, "after": after})


@pytest.mark.anyio
async def test_cancelled_waits_leave_nothing(
    backend: Backend, anyio_backend: tuple[str, dict[str, object]], anyio_backend_name: str,
    report_figures: Callable[[dict[str, object]], None],
) -> None:
    handle = AsyncSysGenID.open(backend.path)
    fd = handle.fileno()

    async def cancelled_wait() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(handle.wait_for_change)
            await anyio.wait_all_tasks_blocked()  # the wait is registered with the loop
            tasks.cancel_scope.cancel()

    cycles = _cycles(backend)
    try:
        for _ in range(WARM_UP):
            await cancelled_wait()
        before = _snapshot()
        readers = _readers(fd, anyio_backend_name)
        for _ in range(cycles):
            await cancelled_wait()
        after = _snapshot()
        assert _readers(fd, anyio_backend_name) == readers, "a cancelled wait left its reader registered"
        _assert_flat(before, after)
        backend.bump()
        with anyio.fail_after(10):
            assert await handle.wait_for_change() == backend.generation, "the handle still works"
    finally:
        handle.close()
    report_figures({"backend": backend.name, "loop": _loop_name(anyio_backend), "cancelled_waits": cycles,
                    "before": before, "after": after})
