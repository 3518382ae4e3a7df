"""A service process with its own restore hooks, for the orchestrator scenario.

    python restore_worker.py DEVICE ok|slow|fail

Runs a RestoreWatcher with one hook: "ok" returns at once, "slow" takes 0.5 s, "fail"
raises (so this process stays outdated). Prints "ready" once watching, then
"ran GENERATION" each time its hook ran, and exits when stdin closes. The simulator
backend runs the same ``serve`` in a thread instead of a process.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import anyio

from sysgenid_async.restore import RestoreHooks, RetryPolicy, restore_watcher


async def serve(path: str, behaviour: str, say: Callable[[str], None], wait_for_stop: Callable[[], object]) -> None:
    hooks = RestoreHooks()

    @hooks.register
    async def rebuild(generation: int) -> None:
        if behaviour == "slow":
            await anyio.sleep(0.5)
        say(f"ran {generation}")
        if behaviour == "fail":
            raise RuntimeError("this service cannot rebuild")

    async with restore_watcher(path, hooks=hooks, retry=RetryPolicy(max_attempts=0)):
        say("ready")
        await anyio.to_thread.run_sync(wait_for_stop)


def main() -> None:
    def say(line: str) -> None:
        print(line, flush=True)

    anyio.run(serve, sys.argv[1], sys.argv[2], say, sys.stdin.read)


if __name__ == "__main__":
    main()
