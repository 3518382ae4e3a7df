"""The service the clone test snapshots: runs in the guest, built on the library.

It runs, side by side:
- the process restore watcher with the ready-made ``random`` reseed (left out when the
  kernel command line says ``noreseed``: the control run) and a counting hook;
- a ``watch()`` loop;
- a generation-bound secret;
- a request at resume time: a thread that wakes on the kernel's change (as the watcher
  does) and at once reads a generation-bound ``prefix`` drawn from ``random``, racing the
  hooks; it must get a value drawn after the reseed, so the clones' prefixes differ;
- an ``IDENTITIES`` hook that fails on its first attempt after a restore, and a
  ``SECRETS`` hook that derives from it: the retry must run the later phase again, so the
  secret ends up derived from the new identity;
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
import threading
import time

import anyio

from sysgenid_async import BlockingSysGenID, watch
from sysgenid_async.restore import (
    Orchestrator,
    Phase,
    RestoreHooks,
    RetryPolicy,
    generation_bound,
    restore_watcher,
)
from sysgenid_async.restore.reseed import reseed_random

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


def racing_request(prefix: object, got: dict[int, int]) -> None:
    """A request that arrives the moment the VM resumes: woken with the watcher, it reads the
    bound value at once, in its own thread, while the watcher's task may not have run yet."""
    with BlockingSysGenID.open() as handle:
        while True:
            generation = handle.wait_for_change()
            got[generation] = prefix()  # type: ignore[operator]
            handle.ack(generation)


async def service() -> None:
    workers = start_workers()  # noqa: F841 - they live as long as this process
    hooks = RestoreHooks()
    runs: dict[int, int] = {}
    state = {"identity": "snapshot", "secret": "", "identity_attempts": 0}
    if RESEED:
        hooks.register(reseed_random, phase=Phase.RESEED)

    @hooks.register(phase=Phase.IDENTITIES)
    def renew_identity(generation: int) -> None:
        state["identity_attempts"] += 1  # type: ignore[operator]
        if state["identity_attempts"] % 2 == 1:
            raise OSError("the identity service is not up yet (fails once per restore)")
        state["identity"] = os.urandom(4).hex()

    @hooks.register(phase=Phase.SECRETS)
    def count(generation: int) -> None:
        runs[generation] = runs.get(generation, 0) + 1
        state["secret"] = f"derived-from-{state['identity']}"

    prefix = generation_bound(phase=Phase.RESEED, hooks=hooks)(lambda: random.getrandbits(64))
    raced: dict[int, int] = {}
    prefix()  # built under the generation at boot
    threading.Thread(target=racing_request, args=(prefix, raced), daemon=True).start()

    seen_by_watch: list[int] = []
    secret()  # built under the generation at boot
    async with restore_watcher(hooks=hooks, retry=RetryPolicy(initial_delay=0.1)) as watcher, \
            Orchestrator(timeout=30) as orchestrator, \
            anyio.create_task_group() as tasks:

            async def follow() -> None:
                async with watch() as changes:
                    async for generation in changes:
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
                    "racing_prefix": raced.get(report.generation),
                    "prefix": prefix(),
                    "identity_attempts": state["identity_attempts"],
                    "secret_follows_identity": state["secret"] == f"derived-from-{state['identity']}",
                    "reseed": RESEED,
                    "uptime_at_report": finished,
                }))


def main() -> None:
    anyio.run(worker if sys.argv[1:] == ["--worker"] else service)


if __name__ == "__main__":
    main()
