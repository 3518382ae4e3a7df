"""The service the clone test snapshots: runs in the guest, built on the library.

It runs, side by side:
- the process restore watcher with the ready-made ``random`` reseed (left out when the
  kernel command line says ``noreseed``: the control run) and a counting hook;
- a ``watch()`` loop;
- a generation-bound secret;
- a v4 orchestrator, with two watcher processes (this file with ``--worker``).

Serial protocol, one line each: ``READY``, then ``ALIVE <generation>`` every half second,
and for every generation change one ``REPORT <json>`` once everything has caught up.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import anyio

from sysgenid_async import Orchestrator, Phase, RestoreHooks, generation_bound, restore_watcher, watch
from sysgenid_async.reseed import reseed_random

with open("/proc/cmdline") as cmdline:
    RESEED = "noreseed" not in cmdline.read().split()


@generation_bound
def secret() -> str:
    return os.urandom(8).hex()


def say(line: str) -> None:
    print(line, flush=True)


async def worker() -> None:
    hooks = RestoreHooks()
    hooks.register(lambda generation: None, name="worker-rebuild")
    async with restore_watcher(hooks=hooks):
        say("ready")
        await anyio.to_thread.run_sync(sys.stdin.read)


def start_workers() -> list[subprocess.Popen[str]]:
    """Two more watcher processes on the machine, each with its own restore watcher."""
    command = [sys.executable, __file__, "--worker"]
    workers = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for process in workers:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return workers


async def service() -> None:
    workers = start_workers()  # noqa: F841 - they live as long as this process
    hooks = RestoreHooks()
    runs: dict[int, int] = {}
    if RESEED:
        hooks.register(reseed_random, phase=Phase.RESEED)

    @hooks.register(phase=Phase.SECRETS)
    def count(generation: int) -> None:
        runs[generation] = runs.get(generation, 0) + 1

    seen_by_watch: list[int] = []
    secret()  # built under the generation at boot
    async with restore_watcher(hooks=hooks) as watcher, Orchestrator(timeout=30) as orchestrator, \
            anyio.create_task_group() as tasks:

            async def follow() -> None:
                async for generation in watch():
                    seen_by_watch.append(generation)

            async def heartbeat() -> None:
                while True:
                    say(f"ALIVE {watcher.generation}")
                    await anyio.sleep(0.5)

            tasks.start_soon(follow)
            tasks.start_soon(heartbeat)
            say("READY")
            while True:
                report = await orchestrator.handle_next()
                finished = time.monotonic()
                say("REPORT " + json.dumps({
                    "generation": report.generation,
                    "orchestrator": report.result.value,
                    "late_watchers": report.late_watchers,
                    "restarts": report.restarts,
                    "hook_runs": runs.get(report.generation, 0),
                    "watch_saw": report.generation in seen_by_watch,
                    "acknowledged": watcher.acknowledged == report.generation,
                    "random": random.getrandbits(32),
                    "secret": secret(),
                    "reseed": RESEED,
                    "uptime_at_report": finished,
                }))


def main() -> None:
    anyio.run(worker if sys.argv[1:] == ["--worker"] else service)


if __name__ == "__main__":
    main()
