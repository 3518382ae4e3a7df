"""Commands on the device itself: ``status``, ``watch``, ``trigger``, ``wait-watchers``, ``selftest``, ``demo``.

Each command imports what only it needs when it runs: ``status`` and ``trigger`` load the fd
layer alone (no anyio, no restore layer), which keeps the command line's start-up short.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING

from ..device import Device, WaitResult
from ..errors import SysGenIDError
from ..uapi import Abi
from ._options import (
    EXIT_EXEC_FAILED,
    EXIT_OK,
    EXIT_SELFTEST_FAILED,
    EXIT_TIMED_OUT,
    EXIT_USAGE,
    emit,
)

if TYPE_CHECKING:
    from ..async_device import AsyncSysGenID


def _run_command(command: list[str], env: dict[str, str], timeout: float | None = None) -> int | str:
    """The command's exit status, or ``"timed out after S s"`` (it is killed then)."""
    import subprocess

    try:
        return subprocess.run(command, env=env, check=False, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:g} s"


def status(options: argparse.Namespace) -> int:
    with Device.open(options.device, abi=options.abi, watcher=False) as device:
        outdated = device.outdated_watchers() if device.abi is Abi.V4 else None
        record: dict[str, object] = {"device": device.path, "abi": device.abi.value, "generation": device.generation,
                                     "outdated_watchers": outdated}
    text = f"device {record['device']}\nabi {record['abi']}\ngeneration {record['generation']}"
    text += f"\noutdated watchers {outdated}" if outdated is not None else "\noutdated watchers (not counted by v8)"
    if options.watchers:
        from ._lifecycle import entry_record, registered, watcher_table

        entries, stale = registered(options)
        generation = int(str(record["generation"]))
        record["watchers"] = [entry_record(e, generation) for e in entries]
        record["stale_entries"] = stale
        named_late = sum(e.late_for(generation) for e in entries)
        if outdated is not None:
            record["anonymous_outdated"] = max(0, outdated - named_late)
        text += "\n\n" + watcher_table(entries, generation)
        if stale:
            text += f"\n({stale} stale entries of dead processes ignored)"
    emit(options, record, text)
    return EXIT_OK


def watch(options: argparse.Namespace) -> int:
    command: list[str] | None = options.exec_command  # split by the parser

    import shlex

    import anyio

    async def run() -> int:
        from ..async_device import moved_on
        from ..changes import watch
        from ..restore.retry import RetryPolicy, retry

        retries = None if options.max_attempts is None else options.max_attempts - 1
        policy = RetryPolicy(initial_delay=options.retry_delay, max_delay=max(options.retry_delay, 60.0),
                             max_attempts=retries)

        async def run_until_done(command: list[str], generation: int, handle: AsyncSysGenID, *, hold: bool) -> bool:
            """Run the command until it exits 0 (True), or give up on this generation (False);
            ``hold``: then keep it unacknowledged until the next one."""
            env = dict(os.environ, SYSGENID_GENERATION=str(generation))
            status: int | str = 0

            async def attempt() -> bool:
                nonlocal status
                status = await anyio.to_thread.run_sync(_run_command, command, env, options.exec_timeout)
                return status == 0

            def failed(attempt_number: int, delay: float | None) -> None:
                later = f"retrying in {delay:g} s" if delay is not None else "no retries left"
                outcome = status if isinstance(status, str) else f"exited with {status}"
                print(f"sysgenid-async: {shlex.join(command)} {outcome} (attempt {attempt_number}); "
                      f"generation {generation} stays unacknowledged; {later}", file=sys.stderr, flush=True)

            if await attempt() or await retry(policy, attempt, lambda delay: moved_on(handle, generation, delay),
                                              failed):
                return True
            if hold and handle.generation == generation:
                # Kept unacknowledged, for an orchestrator to see, until the next generation.
                await moved_on(handle, generation, None)
            return False

        seen = 0
        async with watch(options.device, abi=options.abi, ack=not options.no_ack) as changes:
            async for generation in changes:
                emit(options, {"generation": generation, "time": time.time()}, f"generation {generation}")
                seen += 1
                last = options.count is not None and seen >= options.count
                if command is not None and not await run_until_done(command, generation, changes.handle,
                                                                    hold=not last):
                    if last:
                        changes.close()  # closed, not acknowledged: the command failed for it
                        return EXIT_EXEC_FAILED
                    continue  # a newer generation: the next iteration reads it (this one is stale)
                if last:
                    break  # a clean exit from the block acknowledges this last generation
        return EXIT_OK

    try:
        return anyio.run(run)
    except FileNotFoundError as exc:
        if exc.filename is None or isinstance(exc, SysGenIDError):
            raise
        print(f"sysgenid-async: --exec: {exc.filename}: command not found", file=sys.stderr)
        return EXIT_EXEC_FAILED


def trigger(options: argparse.Namespace) -> int:
    with Device.open(options.device, abi=options.abi, watcher=False) as device:
        generation = device.trigger(options.min_generation)
    emit(options, {"generation": generation}, f"generation {generation}")
    return EXIT_OK


def wait_watchers(options: argparse.Namespace) -> int:
    from ..blocking import BlockingSysGenID
    from ..restore.orchestrator import likely_cause_of_timeout
    from ..timeouts import Deadline

    deadline = Deadline(options.timeout)
    while True:
        # Probe-only (read-only, untracked): a node this user may only read will do.
        with BlockingSysGenID.open(options.device, abi=options.abi, watcher=False) as handle:
            result = handle.wait_watchers(deadline.remaining())
            abi, generation = handle.abi, handle.generation
            outdated = handle.outdated_watchers() if abi is Abi.V4 else None
        # Outdated itself (a newer generation): a fresh file starts up to date; wait on with one.
        if result is not WaitResult.CALLER_OUTDATED:
            break
    record = {"result": result.value, "generation": generation, "outdated_watchers": outdated}
    if result is WaitResult.TIMED_OUT:
        cause = likely_cause_of_timeout(generation)
        count = f"{outdated} watchers" if outdated is not None else "watchers (v8 keeps no count)"
        print(f"sysgenid-async: wait-watchers: timed out at generation {generation} with {count} still outdated"
              + (f"; {cause}" if cause else ""), file=sys.stderr)
        if options.json:
            emit(options, record, "")
        return EXIT_TIMED_OUT
    emit(options, record, "all watchers caught up")
    return EXIT_OK


def selftest(options: argparse.Namespace) -> int:
    from ..selftest import format_table, run_selftest

    if options.abi != "auto":
        # --abi: the device must speak it (AbiMismatchError otherwise, exit 1), then the checks run.
        with Device.open(options.device, abi=options.abi, watcher=False):
            pass
    results = run_selftest(options.device, allow_trigger=options.allow_trigger)
    if options.json:
        print(json.dumps([{"name": r.name, "status": r.status, "detail": r.detail} for r in results], indent=2))
    else:
        print(format_table(results))
    return EXIT_SELFTEST_FAILED if any(r.status == "fail" for r in results) else EXIT_OK


def demo(options: argparse.Namespace) -> int:
    import contextlib
    import io

    import anyio

    from ..demo import run_demo

    if options.device is not None:
        print("sysgenid-async demo: runs on a simulated device of its own; --device does not apply (see "
              "'sysgenid-async simulate' to run a program on the simulator)", file=sys.stderr)
        return EXIT_USAGE
    abi = "v4" if options.abi == "auto" else options.abi
    if not options.json:
        return anyio.run(run_demo, abi)
    story = io.StringIO()
    with contextlib.redirect_stdout(story):
        status = anyio.run(run_demo, abi)
    for line in story.getvalue().splitlines():
        print(json.dumps(line))
    return status


