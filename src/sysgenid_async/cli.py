"""The command line: ``sysgenid-async`` and ``python -m sysgenid_async``.

:func:`cli` takes the arguments and returns the exit status, so tests call it directly.

Exit status: 0 success; 1 a device error; 2 usage; 3 ``wait-watchers`` or ``wait-ready``
timed out; 4 no device; 5 permission denied; 6 ``selftest`` found a failure; 7 an ``--exec``
command could not be started; 8 ``prepare`` or ``resume``: a process failed or did not
confirm, the registry directory does not exist, or fewer watchers than ``--expect`` are
registered; 9 another ``prepare`` or ``resume`` is in progress; 130 interrupted. A command
that fails does not end ``watch``: it is run again per the retry options, and its generation stays
unacknowledged until it succeeds or a newer generation arrives.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import anyio

from . import __version__
from .async_device import AsyncSysGenID
from .blocking import BlockingSysGenID
from .device import Device, WaitResult, resolve_device_path
from .errors import DeviceNotFoundError, DevicePermissionError, SysGenIDError
from .restore.orchestrator import likely_cause_of_timeout
from .restore.registry import (
    RUNTIME_DIR_VARIABLE,
    Registry,
    RegistryError,
    RegistryPermissionError,
    WatcherEntry,
)
from .selftest import format_table, run_selftest
from .timeouts import Deadline, validate_timeout
from .uapi import Abi

__all__ = ["EXIT_CODES", "cli", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMED_OUT = 3
EXIT_NO_DEVICE = 4
EXIT_PERMISSION = 5
EXIT_SELFTEST_FAILED = 6
EXIT_EXEC_FAILED = 7
EXIT_LIFECYCLE_FAILED = 8
EXIT_BUSY = 9
EXIT_INTERRUPTED = 130
#: How much longer than its --timeout prepare and resume wait for the processes' replies.
REPLY_GRACE_SECONDS = 1.0
#: How often wait-ready looks at the registry and the device.
READY_POLL_SECONDS = 0.05

#: Every exit status and its meaning, as documented.
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_ERROR: "a device error (the message says which)",
    EXIT_USAGE: "usage error",
    EXIT_TIMED_OUT: "wait-watchers, wait-ready: timed out with watchers still outdated",
    EXIT_NO_DEVICE: "the device does not exist",
    EXIT_PERMISSION: "permission denied (the message names the permission)",
    EXIT_SELFTEST_FAILED: "selftest: at least one check failed",
    EXIT_EXEC_FAILED: "watch --exec: the command could not be started",
    EXIT_LIFECYCLE_FAILED: "prepare, resume: a process failed, did not answer or was not prepared; the registry "
    "directory does not exist; fewer watchers than --expect",
    EXIT_BUSY: "prepare, resume: another prepare or resume is in progress",
    EXIT_INTERRUPTED: "interrupted",
}


def _run_command(command: list[str], env: dict[str, str], timeout: float | None = None) -> int | str:
    """The command's exit status, or ``"timed out after S s"`` (it is killed then)."""
    try:
        return subprocess.run(command, env=env, check=False, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:g} s"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message}")


def _timeout(text: str) -> float | None:
    """Seconds, checked as every timeout of the library is (``inf``: no limit)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    try:
        return validate_timeout(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}") from None


def _positive_float(text: str) -> float:
    value = _timeout(text)
    if value is None or value == 0:
        raise argparse.ArgumentTypeError(f"must be a positive, finite number: {text!r}")
    return value


def _int_from(minimum: int) -> Callable[[str], int]:
    """An argparse type: a decimal integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}: {text!r}")
        return value

    return parse


_non_negative_int = _int_from(0)
_positive_int = _int_from(1)


def _u32(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 2**32 - 1:
        raise argparse.ArgumentTypeError(f"must be in 0..4294967295: {text!r}")
    return value


def _global_options(*, defaults: bool) -> _Parser:
    """The options every command takes, before or after its name (``status --device X``).

    The top parser's copy has the defaults; the commands' copy (a separate one: parents share
    their actions) has none, so that an option given before the command is not reset by it."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    common = _Parser(add_help=False)
    common.add_argument("--device", metavar="PATH", default=default(None),
                        help="device path (default: $SYSGENID_DEVICE, then /dev/sysgenid)")
    common.add_argument("--abi", choices=["auto", "v4", "v8"], default=default("auto"),
                        help="ABI to speak (default: probe)")
    common.add_argument("--runtime-dir", metavar="DIR", default=default(None),
                        help="the watcher registry (default: $SYSGENID_ASYNC_RUNTIME_DIR, then /run/sysgenid-async "
                        "for root, $XDG_RUNTIME_DIR/sysgenid-async for others)")
    return common


def _exit_status_help() -> str:
    return "exit status:\n" + "\n".join(f"  {status:>3}  {meaning}" for status, meaning in EXIT_CODES.items())


def _build_parser() -> _Parser:
    common = _global_options(defaults=False)
    parser = _Parser(prog="sysgenid-async", description="Follow the system generation ID device.",
                     parents=[_global_options(defaults=True)], epilog=_exit_status_help(),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"sysgenid-async {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add_command(name: str, help: str) -> _Parser:
        command: _Parser = commands.add_parser(name, help=help, parents=[common], epilog=_exit_status_help(),
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
        return command

    status = add_command("status", help="print the generation, ABI and outdated watchers")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.add_argument("--watchers", action="store_true",
                        help="also list the registered watcher processes: who is late, its failing hook and error")

    watch = add_command("watch", help="print a line per generation change, acknowledging each")
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    watch.add_argument("--no-ack", action="store_true", help="never acknowledge (reopen after each change)")
    watch.add_argument(
        "--exec", dest="exec_command", metavar="CMD",
        help="run CMD (split like a shell would, but run without one) on each change, with "
        "SYSGENID_GENERATION in its environment; acknowledge only if it exits 0",
    )
    watch.add_argument("--count", type=_positive_int, metavar="N", help="stop after N changes")
    watch.add_argument("--exec-timeout", type=_positive_float, metavar="SECONDS",
                       help="--exec: kill the command after SECONDS; that counts as a failure (default: no limit)")
    watch.add_argument("--retry-delay", type=_positive_float, default=1.0, metavar="SECONDS",
                       help="--exec: first delay before running a failed command again, doubling up to 60 s "
                       "(default 1)")
    watch.add_argument("--max-attempts", type=_non_negative_int, metavar="N",
                       help="--exec: retries of a failed command for one generation (default: until it "
                       "succeeds or the generation changes); then the generation stays unacknowledged")

    trigger = add_command("trigger", help="force a generation change (privileged)")
    trigger.add_argument("--min", dest="min_generation", type=_u32, default=0, metavar="N",
                         help="minimum new generation (default 0: current + 1)")
    trigger.add_argument("--json", action="store_true", help="one JSON object")

    wait = add_command("wait-watchers", help="wait until every watcher has acknowledged")
    wait.add_argument("--timeout", type=_timeout, metavar="SECONDS", help="give up after SECONDS")
    wait.add_argument("--json", action="store_true", help="one JSON object")

    selftest = add_command("selftest", help="check that the live device behaves as documented")
    selftest.add_argument("--allow-trigger", action="store_true", help="also check a forced generation change")
    selftest.add_argument("--json", action="store_true", help="results as JSON")

    for name, text in (("prepare", "ask every registered process to run its before-snapshot hooks; wait for all"),
                       ("resume", "after a prepare that no snapshot restore followed: run the resume hooks")):
        lifecycle = add_command(name, help=text)
        lifecycle.add_argument("--timeout", type=_positive_float, default=30.0, metavar="SECONDS",
                               help=f"the hooks' budget in each process (default 30); replies are awaited "
                               f"{REPLY_GRACE_SECONDS:g} s longer")
        lifecycle.add_argument("--expect", type=_non_negative_int, default=0, metavar="N",
                               help="fail unless at least N watcher processes are registered (default 0: none "
                               "registered is a success)")
        lifecycle.add_argument("--json", action="store_true", help="one JSON object per process")

    ready = add_command("wait-ready", help="wait until every registered watcher has caught up with the device")
    ready.add_argument("--timeout", type=_timeout, metavar="SECONDS", help="give up after SECONDS")
    ready.add_argument("--channel", metavar="PATH|vsock:CID:PORT",
                       help="also write a JSON line per ready generation there (a virtio-serial port, or vsock)")
    ready.add_argument("--follow", action="store_true",
                       help="keep going: report every later generation once ready (--timeout then does not apply)")
    ready.add_argument("--json", action="store_true", help="one JSON object per ready generation")

    demo = add_command("demo", help="an end-to-end story on the simulator: watchers, a bump, an orchestrator")
    demo.add_argument("--json", action="store_true", help="the story's lines as JSON strings, one per line")

    simulate = add_command(
        "simulate",
        help="run a Python script on the simulator: a simulated device at --device (default: the default "
        "path), restored every --restore-every seconds; the script's exit status",
    )
    simulate.add_argument("--restore-every", type=_positive_float, default=1.0, metavar="SECONDS",
                          help="a simulated restore (a generation change) this often (default 1)")
    simulate.add_argument("--json", action="store_true",
                          help="report each simulated restore on stderr as a JSON object, not a sentence")
    simulate.add_argument("-m", dest="as_module", action="store_true",
                          help="SCRIPT names a module, run as python3 -m SCRIPT would (-m sysgenid_async status: "
                          "this command line on the simulator)")
    simulate.add_argument("script", metavar="SCRIPT", help="the Python file to run, as python3 SCRIPT would")
    simulate.add_argument("arguments", nargs=argparse.REMAINDER, metavar="ARG", help="its arguments")
    return parser


def cli(*args: str) -> int:
    """Run the command line with ``args``; returns the exit status."""
    try:
        options = _build_parser().parse_args(args)
    except _UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    try:
        return int(_COMMANDS[options.command](options))
    except DeviceNotFoundError as exc:
        print(f"sysgenid-async: {exc}", file=sys.stderr)
        return EXIT_NO_DEVICE
    except (DevicePermissionError, RegistryPermissionError) as exc:
        print(f"sysgenid-async: {exc}", file=sys.stderr)
        return EXIT_PERMISSION
    except SysGenIDError as exc:
        print(f"sysgenid-async: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    return cli(*(sys.argv[1:] if argv is None else argv))


def _emit(options: argparse.Namespace, record: Mapping[str, object], text: str) -> None:
    print(json.dumps(record) if options.json else text, flush=True)


def _status(options: argparse.Namespace) -> int:
    with Device.open(options.device, abi=options.abi, watcher=False) as device:
        outdated = device.outdated_watchers() if device.abi is Abi.V4 else None
        record: dict[str, object] = {"device": device.path, "abi": device.abi.value, "generation": device.generation,
                                     "outdated_watchers": outdated}
    text = f"device {record['device']}\nabi {record['abi']}\ngeneration {record['generation']}"
    text += f"\noutdated watchers {outdated}" if outdated is not None else "\noutdated watchers (not counted by v8)"
    if options.watchers:
        entries, stale = _registered(options)
        generation = int(str(record["generation"]))
        record["watchers"] = [_entry_record(e, generation) for e in entries]
        record["stale_entries"] = stale
        named_late = sum(e.late_for(generation) for e in entries)
        if outdated is not None:
            record["anonymous_outdated"] = max(0, outdated - named_late)
        text += "\n\n" + _watcher_table(entries, generation)
        if stale:
            text += f"\n({stale} stale entries of dead processes ignored)"
    _emit(options, record, text)
    return EXIT_OK


def _registered(options: argparse.Namespace) -> tuple[list[WatcherEntry], int]:
    """The live entries and the count of stale ones; none when no registry directory exists yet."""
    registry = _open_registry(options)
    if registry is None:
        return [], 0
    entries, stale = registry.scan()
    return entries, len(stale)


def _entry_record(entry: WatcherEntry, generation: int) -> dict[str, object]:
    return {**entry.summary(), "acknowledged": entry.acknowledged, "late": entry.late_for(generation)}


def _watcher_table(entries: list[WatcherEntry], generation: int) -> str:
    if not entries:
        return "no registered watcher processes"
    rows = [("PID", "SERVICE", "STATE", "ACKED", "LATE", "FAILING HOOK", "ERROR")]
    rows += [(str(e.pid), e.service, e.state, str(e.acknowledged), "yes" if e.late_for(generation) else "no",
              e.failing_hook or "-", e.error or "-") for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def _lifecycle(options: argparse.Namespace) -> int:
    """prepare or resume: ask every registered process, concurrently; exit 0 only if all confirmed."""
    from .restore import control

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
        message = {"op": op, "timeout": options.timeout}
        replies: dict[int, dict[str, object]] = {}

        async def ask(index: int, entry: WatcherEntry) -> None:
            path = registry.socket_path(entry.pid, entry.instance)  # the directory's, not what the entry says
            try:
                replies[index] = await control.request(path, message, options.timeout + REPLY_GRACE_SECONDS)
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
        _emit(options, {"pid": entry.pid, "service": entry.service, "ok": ok, "reply": reply},
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


def _wait_ready(options: argparse.Namespace) -> int:
    from .restore.readiness import open_channel, readiness, write_record

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
                _emit(options, record, f"generation {state.generation}: ready ({len(state.watchers)} watchers)")
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


def _watch(options: argparse.Namespace) -> int:
    command = shlex.split(options.exec_command) if options.exec_command else None
    if options.exec_command is not None and not command:
        print("sysgenid-async: --exec needs a command", file=sys.stderr)
        return EXIT_USAGE

    async def run() -> int:
        from .async_device import moved_on
        from .restore.watcher import RetryPolicy
        from .watch import watch

        retry = RetryPolicy(initial_delay=options.retry_delay, max_delay=max(options.retry_delay, 60.0),
                            max_attempts=options.max_attempts)

        async def run_until_done(command: list[str], generation: int, handle: AsyncSysGenID) -> bool:
            """Run the command until it exits 0 (True), or give up on this generation (False)."""
            env = dict(os.environ, SYSGENID_GENERATION=str(generation))
            for attempt, delay in enumerate(itertools.chain(retry.delays(), [None]), start=1):
                status = await anyio.to_thread.run_sync(_run_command, command, env, options.exec_timeout)
                if status == 0:
                    return True
                later = f"retrying in {delay:g} s" if delay is not None else "no retries left"
                outcome = status if isinstance(status, str) else f"exited with {status}"
                print(f"sysgenid-async: {shlex.join(command)} {outcome} (attempt {attempt}); "
                      f"generation {generation} stays unacknowledged; {later}", file=sys.stderr, flush=True)
                if delay is None or await moved_on(handle, generation, delay):
                    break
            if handle.generation == generation:
                # Kept unacknowledged, for an orchestrator to see, until the next generation.
                await moved_on(handle, generation, None)
            return False

        seen = 0
        async with watch(options.device, abi=options.abi, ack=not options.no_ack) as changes:
            async for generation in changes:
                _emit(options, {"generation": generation, "time": time.time()}, f"generation {generation}")
                if command is not None and not await run_until_done(command, generation, changes.handle):
                    continue  # a newer generation: the next iteration reads it (this one is stale)
                seen += 1
                if options.count is not None and seen >= options.count:
                    break  # a clean exit from the block acknowledges this last generation
        return EXIT_OK

    try:
        return anyio.run(run)
    except FileNotFoundError as exc:
        if exc.filename is None or isinstance(exc, SysGenIDError):
            raise
        print(f"sysgenid-async: --exec: {exc.filename}: command not found", file=sys.stderr)
        return EXIT_EXEC_FAILED


def _trigger(options: argparse.Namespace) -> int:
    with Device.open(options.device, abi=options.abi, watcher=False) as device:
        generation = device.trigger(options.min_generation)
    _emit(options, {"generation": generation}, f"generation {generation}")
    return EXIT_OK


def _wait_watchers(options: argparse.Namespace) -> int:
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
            _emit(options, record, "")
        return EXIT_TIMED_OUT
    _emit(options, record, "all watchers caught up")
    return EXIT_OK


def _selftest(options: argparse.Namespace) -> int:
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


def _demo(options: argparse.Namespace) -> int:
    from .demo import run_demo

    if not options.json:
        return anyio.run(run_demo)
    story = io.StringIO()
    with contextlib.redirect_stdout(story):
        status = anyio.run(run_demo)
    for line in story.getvalue().splitlines():
        print(json.dumps(line))
    return status


def _simulate(options: argparse.Namespace) -> int:
    import runpy
    import tempfile
    import threading

    from .testing import SimulatedDevice

    if options.as_module:
        import importlib.util

        try:
            found = importlib.util.find_spec(options.script) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            print(f"sysgenid-async: simulate: no module named {options.script}", file=sys.stderr)
            return EXIT_USAGE
    elif not os.path.isfile(options.script):
        print(f"sysgenid-async: simulate: {options.script}: no such file", file=sys.stderr)
        return EXIT_USAGE
    device = SimulatedDevice(abi=None if options.abi == "auto" else options.abi)
    path = resolve_device_path(options.device)
    stop = threading.Event()

    def restores() -> None:
        while not stop.wait(options.restore_every):
            generation = device.bump()
            report = json.dumps({"simulated_restore": generation}) if options.json else (
                f"sysgenid-async: simulated restore: generation {generation}")
            print(report, file=sys.stderr, flush=True)

    saved_argv, saved_dir = sys.argv, os.environ.get(RUNTIME_DIR_VARIABLE)
    restorer = threading.Thread(target=restores, name="sysgenid-async simulate", daemon=True)
    # The script's restore watchers announce themselves in a registry of their own (unless
    # --runtime-dir names one): a simulation never answers the machine's prepare.
    with device.installed(path), tempfile.TemporaryDirectory(prefix="sysgenid-async-simulate-") as private:
        os.environ[RUNTIME_DIR_VARIABLE] = options.runtime_dir or private
        restorer.start()
        sys.argv = [options.script, *options.arguments]
        try:
            if options.as_module:
                runpy.run_module(options.script, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(options.script, run_name="__main__")
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_ERROR)
        finally:
            sys.argv = saved_argv
            if saved_dir is None:
                os.environ.pop(RUNTIME_DIR_VARIABLE, None)
            else:
                os.environ[RUNTIME_DIR_VARIABLE] = saved_dir
            stop.set()
            restorer.join()
    return EXIT_OK


_COMMANDS = {
    "status": _status,
    "watch": _watch,
    "trigger": _trigger,
    "wait-watchers": _wait_watchers,
    "selftest": _selftest,
    "prepare": _lifecycle,
    "resume": _lifecycle,
    "wait-ready": _wait_ready,
    "demo": _demo,
    "simulate": _simulate,
}
