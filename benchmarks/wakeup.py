"""Wake-up latency: from a bump to the loop body running with the new generation.

Each watcher kind reports ``(generation, CLOCK_MONOTONIC ns)`` as its body starts; the
driver takes the time just before it bumps. On the kernel device each watcher is its own
process (run as ``python wakeup.py child KIND PATH``) and the C epoll watcher gives the
absolute floor; on the simulator, which lives in one process, the watcher runs in a
thread of the driver. One watcher runs at a time, so no two compete for a CPU; the kinds
take turns round by round.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from common import DeviceUnderTest, Figure, Measure, Results, compare_rounds, raw_read_and_ack, task_floor

HERE = Path(__file__).resolve().parent
Report = Callable[[int, int], None]
KINDS = ("library", "task", "baseline", "library-uvloop", "task-uvloop", "baseline-uvloop")


async def library_watcher(path: str, report: Report, ready: Callable[[], None]) -> None:
    from sysgenid_async import watch

    changes = watch(path)
    ready()
    async for generation in changes:
        report(generation, time.monotonic_ns())


async def baseline_watcher(path: str, report: Report, ready: Callable[[], None]) -> None:
    """The floor for an asyncio program: a reader callback, one read, one write."""
    from sysgenid_async.rawfile import open_raw

    raw = open_raw(path, readonly=False, nonblock=True)
    fd = raw.fileno()
    read, write = raw_read_and_ack(raw)
    loop = asyncio.get_running_loop()

    def on_readable() -> None:
        try:
            data = read()
        except BlockingIOError:
            return
        report(int.from_bytes(data, sys.byteorder), time.monotonic_ns())
        write(data)

    loop.add_reader(fd, on_readable)
    ready()
    try:
        await asyncio.Event().wait()
    finally:
        loop.remove_reader(fd)
        raw.close()


async def task_watcher(path: str, report: Report, ready: Callable[[], None]) -> None:
    """The task-based floor: ``watch()``'s semantics written by hand (see common.task_floor)."""
    from sysgenid_async.rawfile import open_raw

    raw = open_raw(path, readonly=False, nonblock=True)
    ready()
    try:
        await task_floor(raw, lambda generation: report(generation, time.monotonic_ns()))
    finally:
        raw.close()


def run_kind(kind: str, coroutine: Coroutine[Any, Any, None]) -> None:
    if kind.endswith("-uvloop"):
        import uvloop

        uvloop.run(coroutine)
    else:
        asyncio.run(coroutine)


def watcher_for(kind: str) -> Callable[[str, Report, Callable[[], None]], Coroutine[Any, Any, None]]:
    base = kind.removesuffix("-uvloop")
    return {"library": library_watcher, "task": task_watcher, "baseline": baseline_watcher}[base]


# -- the two ways of running a watcher: a child process (kernel), a thread (simulator) ---


class ProcessWatcher:
    def __init__(self, command: list[str]) -> None:
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"watcher {command} did not start: {line!r}")

    def next_report(self) -> tuple[int, int]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("watcher exited")
        generation, when = line.split()
        return int(generation), int(when)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


class ThreadWatcher:
    def __init__(self, kind: str, path: str) -> None:
        self.reports: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        started = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.task = asyncio.current_task()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher_for(kind)(path, lambda g, t: self.reports.put((g, t)), started.set)

        self.thread = threading.Thread(target=run_kind, args=(kind, main()), daemon=True)
        self.thread.start()
        if not started.wait(30):
            raise RuntimeError(f"{kind} watcher did not start")

    def next_report(self) -> tuple[int, int]:
        return self.reports.get(timeout=30)

    def stop(self) -> None:
        assert self.loop is not None and self.task is not None
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(30)


def epoll_watcher_binary(build: Path) -> Path:
    binary = build / "epoll_watcher"
    source = HERE / "epoll_watcher.c"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        build.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(binary), str(source)], check=True)
    return binary


def sample(device: DeviceUnderTest, watcher: ProcessWatcher | ThreadWatcher, count: int) -> list[float]:
    """Bump ``count`` times; the latency of each, in microseconds."""
    latencies = []
    expected = device.generation
    for _ in range(count):
        expected = (expected + 1) & 0xFFFFFFFF
        started = time.monotonic_ns()
        device.bump()
        generation, woke = watcher.next_report()
        if generation != expected:
            raise RuntimeError(f"watcher reported generation {generation}, expected {expected}")
        latencies.append((woke - started) / 1000)
        time.sleep(0.002)  # let the watcher acknowledge and settle before the next bump
    return latencies


def start(kind: str, device: DeviceUnderTest, build: Path) -> ProcessWatcher | ThreadWatcher:
    if kind == "c-epoll":
        return ProcessWatcher([str(epoll_watcher_binary(build)), device.path])
    if device.kernel:
        return ProcessWatcher([sys.executable, str(Path(__file__).resolve()), "child", kind, device.path])
    return ThreadWatcher(kind, device.path)


def run(device: DeviceUnderTest, results: Results, *, rounds: int, per_round: int, build: Path) -> None:
    kinds = list(KINDS) + (["c-epoll"] if device.kernel else [])
    samples: dict[str, list[list[float]]] = {kind: [] for kind in kinds}
    for round_number in range(rounds):
        order = kinds[round_number % len(kinds):] + kinds[:round_number % len(kinds)]
        for kind in order:
            watcher = start(kind, device, build)
            try:
                sample(device, watcher, 3)  # warm-up: first wake-ups page code in
                samples[kind].append(sample(device, watcher, per_round))
            finally:
                watcher.stop()
    for loop_name, suffix in (("asyncio", ""), ("uvloop", "-uvloop")):
        results.comparisons.append(compare_rounds(
            "wake-up latency", f"watch() on {loop_name}, against the task-based floor", "us",
            list(zip(samples["library" + suffix], samples["task" + suffix], strict=False)),
            target=1.15 if not suffix else None,
            note=f"baseline: a task awaits a future set by a reader callback, reads, runs the body, acks, "
                 f"on {loop_name}",
        ))
        results.comparisons.append(compare_rounds(
            "wake-up latency", f"watch() on {loop_name}, against a bare callback", "us",
            list(zip(samples["library" + suffix], samples["baseline" + suffix], strict=False)),
            note=f"the absolute floor: add_reader once; the callback reads and acks on {loop_name}",
        ))
    if device.kernel:
        floor = [s for r in samples["c-epoll"] for s in r]
        results.measures.append(Measure("wake-up latency", Figure("C epoll watcher (floor)", "us", floor)))
    results.series["wakeup"] = {
        "kinds": kinds,
        **{kind: [s for r in samples[kind] for s in r] for kind in kinds},
    }


def child(kind: str, path: str) -> None:
    def report(generation: int, when: int) -> None:
        sys.stdout.write(f"{generation} {when}\n")
        sys.stdout.flush()

    def ready() -> None:
        sys.stdout.write("ready\n")
        sys.stdout.flush()

    run_kind(kind, watcher_for(kind)(path, report, ready))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "child":
        child(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: wakeup.py child KIND PATH (the driver is benchmarks/run.py)")
