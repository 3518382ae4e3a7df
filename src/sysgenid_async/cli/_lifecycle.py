"""Commands of the snapshot lifecycle: ``prepare``, ``resume``, ``wait-ready``, and the registry they read."""

from __future__ import annotations

import argparse
import math
import sys
import time

import anyio

from ..device import Device
from ..restore.registry import (
    Registry,
    RegistryError,
    RegistryPermissionError,
    WatcherEntry,
)
from ..timeouts import Deadline
from ._options import (
    EXIT_BUSY,
    EXIT_LIFECYCLE_FAILED,
    EXIT_OK,
    EXIT_TIMED_OUT,
    READY_POLL_SECONDS,
    REPLY_GRACE_SECONDS,
    emit,
)


def registered(options: argparse.Namespace) -> tuple[list[WatcherEntry], int]:
    """The live entries and the count of stale ones; none when no registry directory exists yet."""
    registry = _open_registry(options)
    if registry is None:
        return [], 0
    entries, stale = registry.scan()
    return entries, len(stale)


def entry_record(entry: WatcherEntry, generation: int) -> dict[str, object]:
    return {**entry.summary(), "acknowledged": entry.acknowledged, "late": entry.late_for(generation)}


def watcher_table(entries: list[WatcherEntry], generation: int) -> str:
    if not entries:
        return "no registered watcher processes"
    rows = [("PID", "SERVICE", "STATE", "ACKED", "LATE", "FAILING HOOK", "ERROR")]
    rows += [(str(e.pid), e.service, e.state, str(e.acknowledged), "yes" if e.late_for(generation) else "no",
              e.failing_hook or "-", e.error or "-") for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def lifecycle(options: argparse.Namespace) -> int:
    """prepare or resume: ask every registered process, concurrently; exit 0 only if all confirmed."""
    from ..restore import control

    op = options.command
    try:
        registry = Registry(options.runtime_dir)
    except RegistryPermissionError:
        raise
    except RegistryError as exc:
        # A missing directory is a typo or a machine where no watcher ever ran: never a success.
        print(f"sysgenid-async: {op}: {exc}", file=sys.stderr)
        return EXIT_LIFECYCLE_FAILED
    with registry.exclusive("lifecycle") as mine:
        if not mine:
            print(f"sysgenid-async: {op}: another prepare or resume is in progress", file=sys.stderr)
            return EXIT_BUSY
        entries = registry.entries()
        budget = math.inf if options.timeout is None else options.timeout  # --timeout inf: no limit
        message = {"op": op, "timeout": budget}
        replies: dict[int, dict[str, object]] = {}

        async def ask(index: int, entry: WatcherEntry) -> None:
            path = registry.socket_path(entry.pid, entry.instance)  # the directory's, not what the entry says
            try:
                replies[index] = await control.request(path, message, budget + REPLY_GRACE_SECONDS)
            except control.ControlError as exc:
                replies[index] = {"ok": False, "error": str(exc)}

        async def ask_all() -> None:
            async with anyio.create_task_group() as tasks:
                for index, entry in enumerate(entries):
                    tasks.start_soon(ask, index, entry)

        anyio.run(ask_all)
    failed = 0
    for index, entry in enumerate(entries):
        reply = replies[index]
        ok = reply.get("ok") is True
        failed += not ok
        detail = "confirmed" if ok else str(reply.get("error"))
        hook_errors = reply.get("errors")
        if isinstance(hook_errors, list) and hook_errors:
            detail += "; " + "; ".join(f"{e.get('hook')}: {e.get('error')}" for e in hook_errors if isinstance(e, dict))
        not_run = reply.get("not_run")
        if isinstance(not_run, list) and not_run:
            detail += "; not run: " + ", ".join(str(name) for name in not_run)
        emit(options, {"pid": entry.pid, "service": entry.service, "ok": ok, "reply": reply},
              f"{entry.pid:>7}  {entry.service:<20} {'ok' if ok else 'FAILED'}  {detail}")
        if not ok:
            print(f"sysgenid-async: {op}: {entry.service} (pid {entry.pid}): {detail}", file=sys.stderr)
    if len(entries) < options.expect:
        print(f"sysgenid-async: {op}: {len(entries)} restore watcher(s) registered in {registry.path}, "
              f"--expect asked for at least {options.expect}", file=sys.stderr)
        return EXIT_LIFECYCLE_FAILED
    if not entries:
        print(f"{op}: no restore watcher is registered in {registry.path}", file=sys.stderr if options.json else None)
    return EXIT_LIFECYCLE_FAILED if failed else EXIT_OK


def wait_ready(options: argparse.Namespace) -> int:
    from ..restore.readiness import open_channel, readiness, write_record

    def generation() -> int:
        # A file per look, closed at once: on v4 every open file is a watcher, and one kept
        # open here would fall behind at the next change and hold every orchestrator back.
        with Device.open(options.device, abi=options.abi, watcher=False) as device:
            return device.generation

    generation()  # a missing device or a bad --abi fails before the channel is opened
    channel = open_channel(options.channel) if options.channel else None
    deadline = Deadline(None if options.follow else options.timeout)
    reported: int | None = None
    registry: Registry | None = None
    try:
        while True:
            registry = registry or _open_registry(options)  # none yet: no watcher to wait for
            state = readiness(registry, generation())
            if state.ready and state.generation != reported:
                record = state.record()
                emit(options, record, f"generation {state.generation}: ready ({len(state.watchers)} watchers)")
                if channel is not None:
                    write_record(channel, record)
                reported = state.generation
                if not options.follow:
                    return EXIT_OK
            if deadline.expired():
                names = ", ".join(f"{e.service} (pid {e.pid}, {e.state})" for e in state.late)
                print(f"sysgenid-async: wait-ready: timed out at generation {state.generation}; late: {names}",
                      file=sys.stderr)
                return EXIT_TIMED_OUT
            time.sleep(READY_POLL_SECONDS)
    finally:
        if channel is not None:
            channel.close()


def _open_registry(options: argparse.Namespace) -> Registry | None:
    """The registry, or None when its directory does not exist yet (no watcher has run)."""
    try:
        return Registry(options.runtime_dir)
    except RegistryPermissionError:
        raise
    except RegistryError:
        return None


