"""Fan-out: one process, one kernel watcher, many in-process subscribers.

The library: one restore watcher serving half hooks and half ``subscribe()`` loops. Two
baselines. The task-based floor: one task with ``watch()``'s semantics written by hand
(see common.task_floor) whose body sets one ``asyncio.Event`` that as many tasks wait on,
and acknowledges once they all ran. The absolute floor: a reader callback on the same fd
that reads, acknowledges, and sets the Event. Measured: from the bump to the last of
them having run. Memory: traced allocations per subscriber, in a separate, untimed pass.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

from common import (
    Countdown,
    DeviceUnderTest,
    Figure,
    Measure,
    Results,
    compare_rounds,
    raw_read_and_ack,
    task_floor,
)


async def library_setup(
    path: str, subscribers: int, countdown: Countdown, hook_share: float = 0.5,
) -> Callable[[], Awaitable[None]]:
    """Start a restore watcher with ``subscribers`` hooks and subscription loops; return its stop."""
    from sysgenid_async.restore import RestoreHooks, RestoreWatcher

    hooks = RestoreHooks()
    hook_count = int(subscribers * hook_share)
    for index in range(hook_count):
        hooks.register(lambda generation: countdown.hit(), weak=False, name=f"hook-{index}")
    watcher = RestoreWatcher(path, hooks=hooks)
    runner = asyncio.ensure_future(_run_watcher(watcher))
    while watcher._handle is None:  # noqa: ASYNC110 - started once its file is open
        await asyncio.sleep(0.001)

    async def subscriber() -> None:
        async for _generation in watcher.subscribe():
            countdown.hit()

    tasks = [asyncio.ensure_future(subscriber()) for _ in range(subscribers - hook_count)]
    await asyncio.sleep(0)  # every subscription loop is now waiting

    async def stop() -> None:
        for task in (*tasks, runner):
            task.cancel()
        await asyncio.gather(*tasks, runner, return_exceptions=True)

    return stop


async def _run_watcher(watcher: Any) -> None:
    await watcher.run()


async def baseline_setup(path: str, subscribers: int, countdown: Countdown) -> Callable[[], Awaitable[None]]:
    from sysgenid_async.rawfile import open_raw

    raw = open_raw(path, readonly=False, nonblock=True)
    fd = raw.fileno()
    read, write = raw_read_and_ack(raw)
    loop = asyncio.get_running_loop()
    state = {"event": asyncio.Event()}

    def on_readable() -> None:
        try:
            data = read()
        except BlockingIOError:
            return
        write(data)
        event, state["event"] = state["event"], asyncio.Event()
        event.set()

    async def subscriber() -> None:
        while True:
            await state["event"].wait()
            countdown.hit()

    loop.add_reader(fd, on_readable)
    tasks = [asyncio.ensure_future(subscriber()) for _ in range(subscribers)]
    await asyncio.sleep(0)

    async def stop() -> None:
        loop.remove_reader(fd)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raw.close()

    return stop


async def task_setup(path: str, subscribers: int, countdown: Countdown) -> Callable[[], Awaitable[None]]:
    from sysgenid_async.rawfile import open_raw

    raw = open_raw(path, readonly=False, nonblock=True)
    state = {"event": asyncio.Event()}

    async def body(generation: int) -> None:
        event, state["event"] = state["event"], asyncio.Event()
        event.set()
        await countdown.wait()  # acknowledged once every subscriber has run

    async def subscriber() -> None:
        while True:
            await state["event"].wait()
            countdown.hit()

    watcher = asyncio.ensure_future(task_floor(raw, body))
    tasks = [asyncio.ensure_future(subscriber()) for _ in range(subscribers)]
    await asyncio.sleep(0)

    async def stop() -> None:
        for task in (watcher, *tasks):
            task.cancel()
        await asyncio.gather(watcher, *tasks, return_exceptions=True)
        raw.close()

    return stop


async def own_objects_setup(path: str, subscribers: int, countdown: Countdown) -> Callable[[], Awaitable[None]]:
    """What the subscribers themselves hold, with no library: half functions (the hooks'
    lambdas and names), half tasks waiting on an Event (the loops' tasks)."""
    hook_count = subscribers // 2
    functions = [(lambda generation: countdown.hit(), f"hook-{index}") for index in range(hook_count)]
    event = asyncio.Event()

    async def subscriber() -> None:
        await event.wait()

    tasks = [asyncio.ensure_future(subscriber()) for _ in range(subscribers - hook_count)]
    await asyncio.sleep(0)
    for _ in range(subscribers):  # nothing to wait for: the bump reaches no one
        countdown.hit()

    async def stop() -> None:
        functions.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    return stop


SETUPS: dict[str, Callable[[str, int, Countdown], Awaitable[Callable[[], Awaitable[None]]]]] = {
    "library": library_setup,
    "baseline": baseline_setup,
    "task": task_setup,
    "hooks only": lambda path, count, countdown: library_setup(path, count, countdown, hook_share=1.0),
    "subscribe() loops only": lambda path, count, countdown: library_setup(path, count, countdown, hook_share=0.0),
    "own objects": own_objects_setup,
}


async def _timed_bumps(device: DeviceUnderTest, kind: str, subscribers: int, bumps: int) -> list[float]:
    countdown = Countdown(subscribers, asyncio.Event)
    stop = await SETUPS[kind](device.path, subscribers, countdown)
    try:
        times = []
        for index in range(bumps + 1):  # the first bump warms up
            countdown.reset()
            started = time.monotonic_ns()
            device.bump()
            await asyncio.wait_for(countdown.wait(), 600)
            if index:
                times.append((countdown.finished_at - started) / 1e6)
            await asyncio.sleep(0.01)  # the library acknowledges once every loop is back
        return times
    finally:
        await stop()


async def _traced_bytes(device: DeviceUnderTest, kind: str, subscribers: int) -> float:
    """Allocations held per subscriber once set up and through one bump (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        countdown = Countdown(subscribers, asyncio.Event)
        stop = await SETUPS[kind](device.path, subscribers, countdown)
        device.bump()
        await asyncio.wait_for(countdown.wait(), 600)
        await asyncio.sleep(0.05)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        await stop()
        return held / subscribers
    finally:
        tracemalloc.stop()


def run(device: DeviceUnderTest, results: Results, *, rounds: int, per_round: int, subscribers: int,
        scaling: list[int]) -> None:
    async def main() -> None:
        pairs, task_pairs = [], []
        kinds = ["library", "task", "baseline"]
        for round_number in range(rounds):
            shift = round_number % len(kinds)
            got = {kind: await _timed_bumps(device, kind, subscribers, per_round)
                   for kind in kinds[shift:] + kinds[:shift]}
            pairs.append((got["library"], got["baseline"]))
            task_pairs.append((got["library"], got["task"]))
        results.comparisons.append(compare_rounds(
            "fan-out", f"{subscribers:,} subscribers, bump to last run", "ms", pairs, target=1.5,
            note="half hooks, half subscribe() loops, on one restore watcher; "
                 "baseline: a reader callback acks and sets one asyncio.Event the tasks wait on",
        ))
        results.comparisons.append(compare_rounds(
            "fan-out", f"{subscribers:,} subscribers, against the task-based floor", "ms", task_pairs,
            note="baseline: one task with watch()'s semantics sets the Event and acks once all ran",
        ))
        held = {kind: await _traced_bytes(device, kind, subscribers) for kind in SETUPS if kind != "task"}
        results.measures.append(Measure(
            "fan-out memory", Figure("per subscriber, half hooks, half loops (with their tasks)", "bytes",
                                     [held["library"]]),
        ))
        results.measures.append(Measure(
            "fan-out memory", Figure("the library's own, per subscriber (the above less the subscribers' own "
                                     "functions and tasks)", "bytes", [held["library"] - held["own objects"]]),
            target=1024,
        ))
        results.measures.append(Measure(
            "fan-out memory", Figure("per hook (a registered function)", "bytes", [held["hooks only"]]),
        ))
        results.measures.append(Measure(
            "fan-out memory", Figure("per subscribe() loop, its task included", "bytes",
                                     [held["subscribe() loops only"]]),
        ))
        results.measures.append(Measure(
            "fan-out memory", Figure("baseline: per task waiting on an Event", "bytes", [held["baseline"]]),
        ))
        curve: dict[str, list[float]] = {"x": [float(count) for count in scaling], "library": [], "baseline": []}
        for count in scaling:
            for kind in ("library", "baseline"):
                times = await _timed_bumps(device, kind, count, max(1, per_round // 2))
                curve[kind].append(sorted(times)[len(times) // 2])
        results.series["fanout"] = curve

    asyncio.run(main())


if __name__ == "__main__":
    sys.exit("the driver is benchmarks/run.py")
