"""The persistent-reader experiment: would an edge-triggered private epoll cut the wake-up cost?

``watch()`` acknowledges after its body, so the device's file stays readable while the body
runs; a level-triggered reader left registered would fire on every loop iteration. Today
every wait registers the descriptor and every wake-up removes it. The alternative tried
here: put the device's file in a private epoll instance with ``EPOLLET`` and give the loop
that instance's descriptor, which is readable once per change (one ``epoll_wait(0)`` drains
it), so the loop's reader can stay registered across waits.

Both sides are hand-written floors with ``watch()``'s semantics (wait, read, empty body,
acknowledge), N tasks in one process, on asyncio, uvloop and trio: "per-wait" registers the
device's descriptor for each wait (common.task_floor on asyncio; ``wait_readable`` on
trio), "edge-triggered" keeps one reader on the private epoll (asyncio, uvloop) or waits on
it (trio, whose ``wait_readable`` cannot hold a registration between waits). Measured: from
a bump to every task having acknowledged. The ratio is edge-triggered / per-wait: below 1
the experiment wins on that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import sys
import time
from collections.abc import Awaitable, Callable

from common import Countdown, DeviceUnderTest, Results, compare_rounds, raw_read_and_ack, task_floor

from sysgenid_async.rawfile import RawFile, open_raw

LOOPS = ("asyncio", "uvloop", "trio")


def _acknowledge(raw: RawFile, countdown: Countdown) -> Callable[[], bool]:
    """Read, empty body, acknowledge; False when there was nothing to read."""
    read, write = raw_read_and_ack(raw)

    def step() -> bool:
        try:
            data = read()
        except BlockingIOError:
            return False
        with contextlib.suppress(OSError):  # a newer generation: read next
            write(data)
        countdown.hit()
        return True

    return step


async def asyncio_edge_triggered(raw: RawFile, countdown: Countdown) -> None:
    loop = asyncio.get_running_loop()
    step = _acknowledge(raw, countdown)
    edges = select.epoll()
    edges.register(raw.fileno(), select.EPOLLIN | select.EPOLLET)
    waiting: list[asyncio.Future[None]] = []

    def on_edge() -> None:
        edges.poll(0)  # drain: the instance is readable again only on the next change
        if waiting and not waiting[0].done():
            waiting[0].set_result(None)

    loop.add_reader(edges.fileno(), on_edge)
    try:
        while True:
            if step():
                continue
            waiting[:] = [loop.create_future()]
            await waiting[0]  # read again before waiting: a change during the body is not lost
    finally:
        loop.remove_reader(edges.fileno())
        edges.close()


async def trio_per_wait(raw: RawFile, countdown: Countdown) -> None:
    import trio

    step = _acknowledge(raw, countdown)
    while True:
        if not step():
            await trio.lowlevel.wait_readable(raw.fileno())


async def trio_edge_triggered(raw: RawFile, countdown: Countdown) -> None:
    import trio

    step = _acknowledge(raw, countdown)
    edges = select.epoll()
    edges.register(raw.fileno(), select.EPOLLIN | select.EPOLLET)
    try:
        while True:
            if not step():
                await trio.lowlevel.wait_readable(edges.fileno())
                edges.poll(0)
    finally:
        edges.close()


def _asyncio_per_wait(raw: RawFile, countdown: Countdown) -> Awaitable[None]:
    return task_floor(raw, lambda generation: countdown.hit())


async def _bumps(device: DeviceUnderTest, countdown: Countdown, bumps: int, wait: Callable[[], Awaitable[object]],
                 bump: Callable[[], Awaitable[object]]) -> list[float]:
    times = []
    for index in range(bumps + 1):  # the first one warms up
        countdown.reset()
        started = time.monotonic_ns()
        await bump()
        await wait()
        if index:
            times.append((time.monotonic_ns() - started) / 1e6)
    return times


def _files(device: DeviceUnderTest, count: int) -> list[RawFile]:
    return [open_raw(device.path, readonly=False, nonblock=True) for _ in range(count)]


def _measure_asyncio(device: DeviceUnderTest, kind: str, count: int, bumps: int, use_uvloop: bool) -> list[float]:
    async def main() -> list[float]:
        countdown = Countdown(count, asyncio.Event)
        files = _files(device, count)
        follow = _asyncio_per_wait if kind == "per-wait" else asyncio_edge_triggered
        tasks = [asyncio.ensure_future(follow(raw, countdown)) for raw in files]
        await asyncio.sleep(0.01)

        async def bump() -> None:
            device.bump()

        try:
            return await _bumps(device, countdown, bumps, countdown.wait, bump)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for raw in files:
                raw.close()

    if use_uvloop:
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


def _measure_trio(device: DeviceUnderTest, kind: str, count: int, bumps: int) -> list[float]:
    import trio

    async def main() -> list[float]:
        countdown = Countdown(count, trio.Event)
        files = _files(device, count)
        follow = trio_per_wait if kind == "per-wait" else trio_edge_triggered

        async def bump() -> None:
            device.bump()

        try:
            async with trio.open_nursery() as nursery:
                for raw in files:
                    nursery.start_soon(follow, raw, countdown)
                await trio.sleep(0.01)
                times = await _bumps(device, countdown, bumps, countdown.wait, bump)
                nursery.cancel_scope.cancel()
            return times
        finally:
            for raw in files:
                raw.close()

    return trio.run(main)


def _measure(device: DeviceUnderTest, loop: str, kind: str, count: int, bumps: int) -> list[float]:
    if loop == "trio":
        return _measure_trio(device, kind, count, bumps)
    return _measure_asyncio(device, kind, count, bumps, use_uvloop=loop == "uvloop")


def run(device: DeviceUnderTest, results: Results, *, rounds: int, per_round: int, counts: list[int]) -> None:
    for loop in LOOPS:
        for count in counts:
            pairs = []
            for round_number in range(rounds):
                kinds = ["edge-triggered", "per-wait"] if round_number % 2 else ["per-wait", "edge-triggered"]
                got = {kind: _measure(device, loop, kind, count, per_round) for kind in kinds}
                pairs.append((got["edge-triggered"], got["per-wait"]))
            results.comparisons.append(compare_rounds(
                "edge-triggered", f"{loop}, N = {count} tasks: persistent EPOLLET reader / per-wait reader", "ms",
                pairs, note="both hand-written with watch()'s semantics; below 1: the persistent reader wins",
            ))


if __name__ == "__main__":
    sys.exit("the driver is benchmarks/run.py")
