"""Quiescence: from a trigger to the orchestrator's ``wait_watchers`` returning "caught up".

N watchers follow the device; the orchestrator (the library's, the same instrument for
every case) triggers, confirms, and waits for every watcher. The library case: each
watcher runs ``async for generation in watch()``. Two baselines: the task-based floor
(``watch()``'s semantics by hand: a task woken through a future, read, empty body, ack;
see common.task_floor), and the bare asyncio read/ack callback, the absolute floor. For
reference, on the kernel device a fourth case runs a blocking read/ack loop with no event
loop at all. On the kernel device the watchers are processes (forked from this one); on
the simulator, which lives in one process, they are tasks and reader callbacks on its
event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable

from common import DeviceUnderTest, Results, compare_rounds, raw_read_and_ack, task_floor

from sysgenid_async import uapi
from sysgenid_async.rawfile import RawFile
from sysgenid_async.uapi import Abi

_libc = ctypes.CDLL(None, use_errno=True)


# -- watcher processes (kernel) -------------------------------------------------------------


def _library_process(path: str, ready: int) -> None:
    from sysgenid_async import watch

    async def main() -> None:
        changes = watch(path)
        os.write(ready, b"r")
        async for _generation in changes:
            pass

    asyncio.run(main())


def _raw_open(path: str, abi: Abi, flags: int) -> int:
    fd = os.open(path, os.O_RDWR | flags)
    if abi is Abi.V8:  # only tracked files count on v8
        _libc.ioctl(fd, ctypes.c_ulong(uapi.SYSGENID_V8_SET_WATCHER_TRACKING), ctypes.c_ulong(1))
    return fd


def _baseline_process(path: str, ready: int, abi: Abi) -> None:
    fd = _raw_open(path, abi, os.O_NONBLOCK)
    loop = asyncio.new_event_loop()

    def on_readable() -> None:
        try:
            data = os.read(fd, 4)
        except BlockingIOError:
            return
        with contextlib.suppress(OSError):  # a newer generation came meanwhile: read next
            os.write(fd, data)

    loop.add_reader(fd, on_readable)
    os.write(ready, b"r")
    loop.run_forever()


def _tracked_raw(path: str, abi: Abi) -> RawFile:
    """A watcher's file through the library's raw layer (kernel or simulator); tracked on v8."""
    from sysgenid_async.rawfile import open_raw

    raw = open_raw(path, readonly=False, nonblock=True)
    if abi is Abi.V8:  # only tracked files count on v8
        raw.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, 1)
    return raw


def _task_process(path: str, ready: int, abi: Abi) -> None:
    async def main() -> None:
        raw = _tracked_raw(path, abi)
        os.write(ready, b"r")
        await task_floor(raw, _empty_body)

    asyncio.run(main())


def _empty_body(generation: int) -> None:
    return None


def _blocking_process(path: str, ready: int, abi: Abi) -> None:
    fd = _raw_open(path, abi, 0)
    os.write(ready, b"r")
    while True:
        data = os.read(fd, 4)
        with contextlib.suppress(OSError):
            os.write(fd, data)


def _fork_watchers(kind: str, device: DeviceUnderTest, count: int) -> Callable[[], None]:
    read_end, write_end = os.pipe()
    children = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read_end)
            status = 0
            try:
                if kind == "library":
                    _library_process(device.path, write_end)
                elif kind == "baseline":
                    _baseline_process(device.path, write_end, device.abi)
                elif kind == "task":
                    _task_process(device.path, write_end, device.abi)
                else:
                    _blocking_process(device.path, write_end, device.abi)
            except BaseException:
                status = 1
            os._exit(status)
        children.append(pid)
    os.close(write_end)
    got = 0
    while got < count:
        chunk = os.read(read_end, count)
        if not chunk:
            raise RuntimeError(f"{kind} watchers died before they were ready")
        got += len(chunk)
    os.close(read_end)

    def stop() -> None:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        for pid in children:
            os.waitpid(pid, 0)

    return stop


# -- watcher tasks (simulator) ---------------------------------------------------------------


async def _sim_watchers(kind: str, device: DeviceUnderTest, count: int) -> Callable[[], Awaitable[None]]:
    from sysgenid_async import watch

    loop = asyncio.get_running_loop()
    if kind == "library":
        async def follow(changes: watch) -> None:
            async for _generation in changes:
                pass

        tasks = [asyncio.ensure_future(follow(watch(device.path))) for _ in range(count)]
        await asyncio.sleep(0)

        async def stop_tasks() -> None:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        return stop_tasks
    files = []
    if kind == "task":
        floors = []
        for _ in range(count):
            raw = _tracked_raw(device.path, device.abi)
            files.append(raw)
            floors.append(asyncio.ensure_future(task_floor(raw, _empty_body)))
        await asyncio.sleep(0)

        async def stop_floors() -> None:
            for task in floors:
                task.cancel()
            await asyncio.gather(*floors, return_exceptions=True)
            for raw in files:
                raw.close()

        return stop_floors
    for _ in range(count):
        raw = _tracked_raw(device.path, device.abi)
        read, write = raw_read_and_ack(raw)

        def on_readable(read: Callable[[], bytes] = read, write: Callable[[bytes], int] = write) -> None:
            with contextlib.suppress(OSError):  # EAGAIN, or a newer generation came meanwhile
                write(read())

        loop.add_reader(raw.fileno(), on_readable)
        files.append(raw)

    async def stop_files() -> None:
        for raw in files:
            loop.remove_reader(raw.fileno())
            raw.close()

    return stop_files


async def _timed_triggers(device: DeviceUnderTest, triggers: int) -> list[float]:
    from sysgenid_async import WaitResult
    from sysgenid_async.restore import Orchestrator

    times = []
    async with Orchestrator(device.path, timeout=600) as orchestrator:
        for index in range(triggers + 1):  # the first one warms up
            started = time.monotonic_ns()
            orchestrator.handle.trigger()
            report = await orchestrator.handle_next()
            if report.result is not WaitResult.CAUGHT_UP:
                raise RuntimeError(f"watchers did not catch up: {report}")
            if index:
                times.append((time.monotonic_ns() - started) / 1e6)
    return times


def _measure(device: DeviceUnderTest, kind: str, count: int, triggers: int) -> list[float]:
    if device.kernel:
        stop = _fork_watchers(kind, device, count)
        try:
            return asyncio.run(_timed_triggers(device, triggers))
        finally:
            stop()

    async def main() -> list[float]:
        stop_sim = await _sim_watchers(kind, device, count)
        try:
            return await _timed_triggers(device, triggers)
        finally:
            await stop_sim()

    return asyncio.run(main())


def run(device: DeviceUnderTest, results: Results, *, rounds: int, per_round: int, counts: list[int]) -> None:
    kinds = ["library", "task", "baseline", *(["blocking"] if device.kernel else [])]
    curve: dict[str, list[float]] = {"x": [float(count) for count in counts], "ratio": []}
    curve.update({kind: [] for kind in kinds})
    where = "watcher processes" if device.kernel else "watcher tasks in one process"
    for count in counts:
        got: dict[str, list[list[float]]] = {kind: [] for kind in kinds}
        for round_number in range(rounds):
            shift = round_number % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                got[kind].append(_measure(device, kind, count, per_round))
        # The targets, at the largest N (128 in the full run): 1.5x the callback floor between
        # processes, 2x between the tasks of one process.
        target = (1.5 if device.kernel else 2.0) if count == max(counts) else None
        comparison = compare_rounds(
            "quiescence", f"N = {count} watchers, trigger to caught up", "ms",
            list(zip(got["library"], got["baseline"], strict=True)), target=target,
            note=f"{where}; baseline: asyncio read/ack callbacks; the same orchestrator measures all",
        )
        results.comparisons.append(comparison)
        results.comparisons.append(compare_rounds(
            "quiescence", f"N = {count}, against the task-based floor", "ms",
            list(zip(got["library"], got["task"], strict=True)),
            note=f"{where}; baseline: watch()'s semantics by hand (a task, a future, read, ack)",
        ))
        if device.kernel:
            results.comparisons.append(compare_rounds(
                "quiescence", f"N = {count}, against blocking read/ack loops", "ms",
                list(zip(got["library"], got["blocking"], strict=True)),
                note=f"{where}; reference: a blocking loop, no event loop at all",
            ))
        for kind in kinds:
            curve[kind].append(sorted(s for r in got[kind] for s in r)[len(got[kind]) * per_round // 2])
        curve["ratio"].append(comparison.ratio)
    results.series["quiescence"] = curve


if __name__ == "__main__":
    sys.exit("the driver is benchmarks/run.py")
