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
- a v4 orchestrator, with two watcher processes (this file with ``--worker NAME``):
  ``worker-a``, and ``slow-worker``, whose restore hook fails once per restore and is
  retried after a few seconds: the orchestrator must name it, hook and error;
- the lifecycle: a pool of real sockets that a before-snapshot hook closes, a resume hook
  reopens and a restore hook reopens if it finds it closed; a command loop on the
  virtio-serial control port runs ``sysgenid-async prepare`` or ``resume`` when the host asks;
  ``prepare-failing`` makes a before-snapshot hook (``flush-cache``) fail once first;
- one pass at a time: an async ``slow-seed`` hook draws a seed at its start and keeps it at its
  end; when the host asks (``trigger-slow``), its next run is slow and the generation is forced,
  so that the host can snapshot the VM mid-pass. The ``watch()`` loop awaits ``restored()`` the
  moment the kernel wakes it, as a request at resume does, and a stream of requests awaits it
  too, each for a second at most: the stale pass a clone resumes must not finish after the
  newer one.

Beside it, for restore to ready's figures: ``clone_watcher`` (C, point (a)), this file with
``--ack-timer`` (point (b)) and with ``--bare-timer`` (a bare asyncio callback, the Python
floor), all at nice -10, above the service, so that they are compared with each other rather
than with the service's load.

Serial protocol, one line each: ``READY``, then ``ALIVE <generation>`` every half second,
for every generation change one ``REPORT <json>`` once everything has caught up,
``PREPARED <json>`` / ``RESUMED <json>`` after a command, ``TRIGGERED-TIMED <generation> <ns>``
after ``trigger-timed`` (a change from inside, stamped just before it), ``SLOW-PASS <generation> <seed>`` when
the slow pass has drawn its seed, and ``TRIGGERED <json>``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import ssl
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
    RestorePendingError,
    RetryPolicy,
    generation_bound,
    restore_watcher,
    restored,
)
from sysgenid_async.restore.orchestrator import OrchestrationReport
from sysgenid_async.restore.reseed import reseed_openssl, reseed_random

with open("/proc/cmdline") as cmdline:
    RESEED = "noreseed" not in cmdline.read().split()


@generation_bound
def secret() -> str:
    return os.urandom(8).hex()


def say(line: str) -> None:
    """One line on the serial console, in one write: several processes share the console."""
    os.write(1, (line + "\n").encode())


# The slow worker's retry delay: kernel/vm/clones.py reports restore -> ready including it.
SLOW_WORKER_RETRY_S = 6.0
# How long the slow pass sleeps after drawing its seed: the host snapshots the VM meanwhile.
SLOW_PASS_S = 30.0


async def worker(name: str) -> None:
    hooks = RestoreHooks()
    failed: set[int] = set()
    retry = RetryPolicy()
    if name == "slow-worker":
        retry = RetryPolicy(initial_delay=SLOW_WORKER_RETRY_S)

        @hooks.register(name="slow-worker-rebuild")
        def rebuild(generation: int) -> None:
            if generation not in failed:  # once per restore
                failed.add(generation)
                raise OSError("the backend is not reachable yet")
    else:
        hooks.register(lambda generation: None, name="worker-rebuild")
    hooks.before_snapshot(lambda generation: None, name=f"{name}-flush")
    async with restore_watcher(hooks=hooks, service=name, retry=retry):
        say("ready")
        await anyio.to_thread.run_sync(sys.stdin.read)


async def ack_timer() -> None:
    """Restore to ready's point (b): the library's restore watcher with one no-op hook, alone in
    its process (kept out of the registry, so the readiness checks count the same watchers).
    Prints ``LIB-ACK <generation> <CLOCK_MONOTONIC ns>`` at each acknowledgement, stamped as the
    handle's acknowledging call returns (the call is wrapped here, for the measurement only)."""
    from sysgenid_async.handle import Handle

    os.nice(-10)  # as the C watcher of point (a): above the service, which wakes at the same time
    acknowledge = Handle.ack_unless_moved_on

    def stamped(handle: Handle, generation: int) -> bool:
        acknowledged = acknowledge(handle, generation)
        if acknowledged:
            say(f"LIB-ACK {generation} {time.clock_gettime_ns(time.CLOCK_MONOTONIC)}")
        return acknowledged

    Handle.ack_unless_moved_on = stamped  # type: ignore[method-assign]
    hooks = RestoreHooks()
    hooks.register(lambda generation: None, name="no-op")
    async with restore_watcher(hooks=hooks, service="ack-timer", announce=False):
        await anyio.Path("/tmp/ack-timer.ready").touch()  # the init waits for it before the service
        await anyio.sleep_forever()


def bare_timer() -> None:
    """Restore to ready's Python floor, beside (a) and (b): a bare asyncio reader callback on the
    device, no library (it reads, acknowledges, and prints ``PY-ACK <generation> <ns>``). What it
    costs over the C watcher is the interpreter's, in a clone whose emulator has not run it yet."""
    import asyncio

    os.nice(-10)
    fd = os.open("/dev/sysgenid", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    loop = asyncio.new_event_loop()

    def on_readable() -> None:
        try:
            data = os.read(fd, 4)
        except BlockingIOError:
            return
        with contextlib.suppress(OSError):  # a newer generation came meanwhile: read next
            os.write(fd, data)
        stamp = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        say(f"PY-ACK {int.from_bytes(data, sys.byteorder)} {stamp}")

    loop.add_reader(fd, on_readable)
    with open("/tmp/bare-timer.ready", "w"):
        pass
    loop.run_forever()


def start_workers() -> list[subprocess.Popen[str]]:
    """Two more watcher processes on the machine, each with its own restore watcher."""
    workers = [subprocess.Popen([sys.executable, __file__, "--worker", name], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for name in ("worker-a", "slow-worker")]
    for process in workers:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return workers


class Pool:
    """Connections that must not cross a snapshot: real sockets."""

    def __init__(self) -> None:
        self.connections: list[socket.socket] = []
        self.open()

    def open(self, generation: int = 0) -> None:
        if not self.connections:
            self.connections = [socket.socket() for _ in range(4)]

    def close(self, generation: int = 0) -> None:
        for connection in self.connections:
            connection.close()
        self.connections = []

    @property
    def is_open(self) -> bool:
        return bool(self.connections)


def command_loop(counts: dict[str, int], pool: Pool, flags: dict[str, bool]) -> None:
    """Run the CLI when the host asks on the control port (no shell in the guest)."""
    path = os.environ.get("CONTROL_PORT")
    if not path or not os.path.exists(path):
        say(f"NO-CONTROL-PORT {path}")
        return
    with open(path, "rb") as port:
        for raw in port:
            command = raw.decode().strip()
            if command == "trigger-slow":
                flags["slow_next"] = True
                done = subprocess.run([sys.executable, "-m", "sysgenid_async", "trigger", "--json"],
                                      capture_output=True, text=True, check=False)
                say("TRIGGERED " + json.dumps({"rc": done.returncode, "stderr": done.stderr[-500:]}))
                continue
            if command == "trigger-timed":  # a change in a clone whose emulator has run the code once
                with BlockingSysGenID.open("/dev/sysgenid", watcher=False) as device:
                    stamp = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                    generation = device.trigger()
                say(f"TRIGGERED-TIMED {generation} {stamp}")
                continue
            if command == "prepare-failing":
                flags["fail_next_flush"] = True
                command = "prepare"
            if command not in ("prepare", "resume"):
                continue
            done = subprocess.run([sys.executable, "-m", "sysgenid_async", command, "--json", "--timeout", "20"],
                                  capture_output=True, text=True, check=False)
            processes = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
            answer = "PREPARED" if command == "prepare" else "RESUMED"
            say(f"{answer} " + json.dumps({
                "rc": done.returncode, "stderr": done.stderr[-500:],
                "processes": [{"service": p["service"], "pid": p["pid"], "ok": p["ok"],
                               "state": p["reply"].get("state"), "note": p["reply"].get("note")}
                              for p in processes],
                "pool_open": pool.is_open, **counts,
            }))


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
    pool = Pool()
    counts = {"before_runs": 0, "resume_runs": 0, "restores": 0, "flush_attempts": 0}
    flags = {"slow_next": False, "fail_next_flush": False}
    reopened: dict[int, bool] = {}
    slow_state: dict[str, object] = {"generation": None, "seed": None}

    @hooks.before_snapshot(phase=Phase.CACHES, name="flush-cache")
    def flush_cache(generation: int) -> None:
        counts["flush_attempts"] += 1
        if flags["fail_next_flush"]:
            flags["fail_next_flush"] = False
            raise OSError("the cache's disk is full")

    @hooks.register(phase=Phase.RESEED, name="slow-seed")
    async def slow_seed(generation: int) -> None:
        seed = os.urandom(8).hex()  # drawn at the start: a stale pass carries the snapshot's
        if flags["slow_next"]:
            flags["slow_next"] = False
            say(f"SLOW-PASS {generation} {seed}")
            await anyio.sleep(SLOW_PASS_S)
        slow_state.update(generation=generation, seed=seed)

    @hooks.before_snapshot(phase=Phase.CONNECTIONS)
    def close_pool(generation: int) -> None:
        counts["before_runs"] += 1
        pool.close()

    @hooks.on_resume(phase=Phase.CONNECTIONS)
    def reopen_pool(generation: int) -> None:
        counts["resume_runs"] += 1
        pool.open()

    @hooks.register(phase=Phase.CONNECTIONS)
    def renew_pool(generation: int) -> None:
        counts["restores"] += 1
        reopened[generation] = not pool.is_open
        pool.close()  # whatever was open is the snapshot's
        pool.open()

    runs: dict[int, int] = {}
    state = {"identity": "snapshot", "secret": "", "identity_attempts": 0}
    if RESEED:
        hooks.register(reseed_random, phase=Phase.RESEED)
        hooks.register(reseed_openssl, phase=Phase.RESEED)
    ssl.RAND_bytes(16)  # OpenSSL's generator has drawn before the snapshot, as a TLS service's has

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
    async with restore_watcher(hooks=hooks, retry=RetryPolicy(initial_delay=0.1), service="clone-service") as watcher, \
            Orchestrator(timeout=2) as orchestrator, \
            anyio.create_task_group() as tasks:

            async def follow() -> None:
                async with watch() as changes:
                    async for generation in changes:
                        seen_by_watch.append(generation)
                        # A request at resume: it waits for this process's hooks (it never runs them).
                        await restored(hooks=hooks, timeout=None)

            async def heartbeat() -> None:
                while True:
                    say(f"ALIVE {watcher.generation}")
                    await anyio.sleep(0.5)

            async def requests() -> None:
                """Requests keep coming, each behind the restore line with a deadline of its own."""
                while True:
                    with contextlib.suppress(RestorePendingError):
                        await restored(hooks=hooks, timeout=1)
                    await anyio.sleep(0.2)

            tasks.start_soon(follow)
            tasks.start_soon(heartbeat)
            tasks.start_soon(requests)
            threading.Thread(target=command_loop, args=(counts, pool, flags), daemon=True).start()
            say("READY")
            while True:
                report: OrchestrationReport = await orchestrator.handle_next()
                # The slow worker is late on purpose: after the report, wait for everyone.
                caught_up = await orchestrator.handle.wait_watchers(60)
                finished = time.monotonic()
                say("REPORT " + json.dumps({
                    "generation": report.generation,
                    "orchestrator": report.result.value,
                    "late_watchers": report.late_watchers,
                    "anonymous_late": report.anonymous_late,
                    "named_late": [{"service": w.service, "pid": w.pid, "state": w.state,
                                    "failing_hook": w.failing_hook, "error": w.error}
                                   for w in report.late_processes],
                    "caught_up_after": caught_up.value,
                    "pool_open": pool.is_open,
                    "pool_reopened_by_restore": reopened.get(report.generation),
                    **counts,
                    "restarts": report.restarts,
                    "hook_runs": runs.get(report.generation, 0),
                    "watch_saw": report.generation in seen_by_watch,
                    "acknowledged": watcher.acknowledged == report.generation,
                    "random": random.getrandbits(32),
                    "openssl": ssl.RAND_bytes(8).hex(),
                    "secret": secret(),
                    "racing_prefix": raced.get(report.generation),
                    "prefix": prefix(),
                    "identity_attempts": state["identity_attempts"],
                    "secret_follows_identity": state["secret"] == f"derived-from-{state['identity']}",
                    "reseed": RESEED,
                    "slow_state": dict(slow_state),
                    "uptime_at_report": finished,
                }))


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        anyio.run(worker, sys.argv[2])
    elif sys.argv[1:2] == ["--ack-timer"]:
        anyio.run(ack_timer)
    elif sys.argv[1:2] == ["--bare-timer"]:
        bare_timer()
    else:
        anyio.run(service)


if __name__ == "__main__":
    main()
