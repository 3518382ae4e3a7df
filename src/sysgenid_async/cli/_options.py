"""The command line's options, exit statuses and output: what every command shares."""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Callable, Mapping

from .. import __version__
from ..timeouts import validate_timeout

__all__ = ["EXIT_CODES", "build_parser", "emit"]

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
    EXIT_PERMISSION: "permission denied (the message names the permission), or the registry directory is not "
    "private",
    EXIT_SELFTEST_FAILED: "selftest: at least one check failed",
    EXIT_EXEC_FAILED: "watch --exec: the command could not be started, or failed for the last of --count changes",
    EXIT_LIFECYCLE_FAILED: "prepare, resume: a process failed, did not answer or was not prepared; the registry "
    "directory does not exist; fewer watchers than --expect",
    EXIT_BUSY: "prepare, resume: another prepare or resume is in progress",
    EXIT_INTERRUPTED: "interrupted",
}


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message}")


def seconds(*, zero: bool = False, unlimited: bool = False) -> Callable[[str], float | None]:
    """An argparse type for a duration, checked by the library's one validator
    (:func:`~sysgenid_async.timeouts.validate_timeout`). ``zero``: 0 is allowed (look once);
    ``unlimited``: ``inf`` is allowed (no limit, given as None). NaN and negative numbers are
    refused with the same message everywhere."""

    def parse(text: str) -> float | None:
        try:
            number = float(text)
            value = validate_timeout(number)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more: {text!r}") from None
        if value == 0 and not zero:
            raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
        if value is None and not unlimited:
            raise argparse.ArgumentTypeError(f"must be a finite number of seconds: {text!r}")
        return value

    return parse


def _device_path(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("the device path is empty (leave --device out for the default)")
    return text


def _command_line(text: str) -> list[str]:
    """``--exec``'s command, split as a shell would (it runs without one)."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"cannot split {text!r} into words: {exc}") from None
    if not words:
        raise argparse.ArgumentTypeError("needs a command")
    return words


def _channel(text: str) -> str:
    """``PATH`` or ``vsock:CID:PORT``: the form is checked here, the channel opened by the command."""
    if text.startswith("vsock:"):
        parts = text.split(":")
        if len(parts) != 3 or not all(part.isdigit() for part in parts[1:]):
            raise argparse.ArgumentTypeError(f"a vsock channel is vsock:CID:PORT, with numbers: {text!r}")
    elif not text:
        raise argparse.ArgumentTypeError("the channel path is empty")
    return text


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
    common.add_argument("--device", metavar="PATH", type=_device_path, default=default(None),
                        help="device path (default: $SYSGENID_DEVICE, then /dev/sysgenid)")
    common.add_argument("--abi", choices=["auto", "v4", "v8"], default=default("auto"),
                        help="ABI to speak (default: probe)")
    common.add_argument("--runtime-dir", metavar="DIR", default=default(None),
                        help="the watcher registry (default: $SYSGENID_ASYNC_RUNTIME_DIR, then /run/sysgenid-async "
                        "for root, $XDG_RUNTIME_DIR/sysgenid-async for others)")
    return common


def _exit_status_help() -> str:
    return "exit status:\n" + "\n".join(f"  {status:>3}  {meaning}" for status, meaning in EXIT_CODES.items())


def build_parser() -> _Parser:
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
        "--exec", dest="exec_command", metavar="CMD", type=_command_line,
        help="run CMD (split like a shell would, but run without one) on each change, with "
        "SYSGENID_GENERATION in its environment; acknowledge only if it exits 0",
    )
    watch.add_argument("--count", type=_positive_int, metavar="N",
                       help="stop after N changes, whether --exec's command succeeded for them or not "
                       f"(exit {EXIT_EXEC_FAILED} if it failed for the last one)")
    watch.add_argument("--exec-timeout", type=seconds(unlimited=True), metavar="SECONDS",
                       help="--exec: kill the command after SECONDS; that counts as a failure (default: no limit)")
    watch.add_argument("--retry-delay", type=seconds(), default=1.0, metavar="SECONDS",
                       help="--exec: first delay before running a failed command again, doubling up to 60 s "
                       "(default 1)")
    watch.add_argument("--max-attempts", type=_positive_int, metavar="N",
                       help="--exec: run a failed command at most N times for one generation, the first "
                       "included (default: until it succeeds or the generation changes); then the "
                       "generation stays unacknowledged")

    trigger = add_command("trigger", help="force a generation change (privileged)")
    trigger.add_argument("--min", dest="min_generation", type=_u32, default=0, metavar="N",
                         help="minimum new generation (default 0: current + 1)")
    trigger.add_argument("--json", action="store_true", help="one JSON object")

    wait = add_command("wait-watchers", help="wait until every watcher has acknowledged")
    wait.add_argument("--timeout", type=seconds(zero=True, unlimited=True), metavar="SECONDS",
                      help="give up after SECONDS (0: look once; default and inf: no limit)")
    wait.add_argument("--json", action="store_true", help="one JSON object")

    selftest = add_command("selftest", help="check that the live device behaves as documented")
    selftest.add_argument("--allow-trigger", action="store_true", help="also check a forced generation change")
    selftest.add_argument("--json", action="store_true", help="results as JSON")

    for name, text in (("prepare", "ask every registered process to run its before-snapshot hooks; wait for all"),
                       ("resume", "after a prepare that no snapshot restore followed: run the resume hooks")):
        lifecycle = add_command(name, help=text)
        lifecycle.add_argument("--timeout", type=seconds(unlimited=True), default=30.0, metavar="SECONDS",
                               help=f"the hooks' budget in each process (default 30); replies are awaited "
                               f"{REPLY_GRACE_SECONDS:g} s longer")
        lifecycle.add_argument("--expect", type=_non_negative_int, default=0, metavar="N",
                               help="fail unless at least N watcher processes are registered (default 0: none "
                               "registered is a success)")
        lifecycle.add_argument("--json", action="store_true", help="one JSON object per process")

    ready = add_command("wait-ready", help="wait until every registered watcher has caught up with the device")
    ready.add_argument("--timeout", type=seconds(zero=True, unlimited=True), metavar="SECONDS",
                       help="give up after SECONDS (0: look once; default and inf: no limit)")
    ready.add_argument("--channel", metavar="PATH|vsock:CID:PORT", type=_channel,
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
    simulate.add_argument("--restore-every", type=seconds(), default=1.0, metavar="SECONDS",
                          help="a simulated restore (a generation change) this often (default 1)")
    simulate.add_argument("--json", action="store_true",
                          help="report each simulated restore on stderr as a JSON object, not a sentence")
    simulate.add_argument("-m", dest="as_module", action="store_true",
                          help="SCRIPT names a module, run as python3 -m SCRIPT would (-m sysgenid_async status: "
                          "this command line on the simulator)")
    simulate.add_argument("script", metavar="SCRIPT", nargs="?",
                          help="the Python file (or directory with a __main__.py) to run, as python3 SCRIPT would")
    simulate.add_argument("arguments", nargs=argparse.REMAINDER, metavar="ARG", help="its arguments")
    return parser



def emit(options: argparse.Namespace, record: Mapping[str, object], text: str) -> None:
    print(json.dumps(record) if options.json else text, flush=True)


