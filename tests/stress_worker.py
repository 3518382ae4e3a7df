"""One process of the trigger-storm test: WATCHERS ``watch()`` loops on the device.

Prints ``ready``, then follows every change until it reads the final generation from
stdin and each loop has seen and acknowledged it; prints one JSON line of counts. A loop
counts each generation it sees go backwards (other than by the counter's wraparound: u32,
or 2**31 on a driver with a signed counter), and each it is handed twice.
Usage: stress_worker.py DEVICE WATCHERS [MODULUS]
"""

from __future__ import annotations

import asyncio
import json
import sys

from sysgenid_async import watch

MODULUS = int(sys.argv[3]) if len(sys.argv) > 3 else 2**32


def moved_forward(previous: int, current: int) -> bool:
    """Whether ``current`` is after ``previous`` in the counter's order (wraparound allowed)."""
    return 0 < (current - previous) % MODULUS < MODULUS // 2


async def main(path: str, count: int) -> None:
    final: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    counts = {"watchers": count, "changes_seen": 0, "backwards": 0, "repeated": 0, "caught_up": 0}

    async def follow(changes: watch) -> None:
        previous = changes.handle.acknowledged  # where this file started: up to date then
        async for generation in changes:
            counts["changes_seen"] += 1
            if generation == previous:
                counts["repeated"] += 1
            elif not moved_forward(previous, generation):
                counts["backwards"] += 1
            previous = generation
            if final.done() and generation == final.result():
                changes.acknowledge()  # before the loop ends
                counts["caught_up"] += 1
                return

    watchers = [watch(path) for _ in range(count)]
    loops = [asyncio.ensure_future(follow(w)) for w in watchers]
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    final.set_result(int(line))
    # A loop already up to date with the final generation sees no more changes: it is done.
    for changes, loop in zip(watchers, loops, strict=True):
        if not loop.done() and changes.handle.generation == final.result() and not changes.handle.is_outdated():
            loop.cancel()
            counts["caught_up"] += 1
    await asyncio.gather(*loops, return_exceptions=True)
    print(json.dumps(counts), flush=True)
    # Keep the files open until told: the parent checks the outdated count first.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for changes in watchers:
        changes.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
