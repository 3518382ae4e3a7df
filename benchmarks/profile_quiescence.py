"""Where a quiescence round goes: cProfile of N ``watch()`` tasks on the simulator.

    python benchmarks/profile_quiescence.py [--watchers 128] [--triggers 40] [--top 25]

The orchestrator triggers and waits for N tasks, each running ``async for generation in
watch()``, as the quiescence benchmark does on the simulator; only the triggers are
profiled. cProfile counts each resumption of a coroutine as a call, so a task's wait shows
as two calls per change. Absolute times are the profiler's (several times the real ones);
the shares are what docs/performance.md quotes.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time

from sysgenid_async import watch
from sysgenid_async.restore import Orchestrator
from sysgenid_async.testing import SimulatedDevice

PATH = "/dev/sysgenid-profile"


async def profile(watchers: int, triggers: int) -> tuple[cProfile.Profile, float]:
    async def follow(changes: watch) -> None:
        async for _generation in changes:
            pass

    tasks = [asyncio.ensure_future(follow(watch(PATH))) for _ in range(watchers)]
    await asyncio.sleep(0.01)
    profiler = cProfile.Profile()
    try:
        async with Orchestrator(PATH, timeout=600) as orchestrator:
            started = time.perf_counter()
            profiler.enable()
            for _ in range(triggers):
                orchestrator.handle.trigger()
                await orchestrator.handle_next()
            profiler.disable()
            per_trigger = (time.perf_counter() - started) / triggers
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return profiler, per_trigger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watchers", type=int, default=128)
    parser.add_argument("--triggers", type=int, default=40)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    with SimulatedDevice("v8").installed(PATH, set_env=False):
        profiler, per_trigger = asyncio.run(profile(args.watchers, args.triggers))
    print(f"{args.watchers} watchers, {args.triggers} triggers: {per_trigger * 1000:.2f} ms per trigger (profiled)")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
