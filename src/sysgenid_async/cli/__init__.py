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
import importlib
import sys
from collections.abc import Callable, Sequence

from ..errors import DeviceNotFoundError, DevicePermissionError, SysGenIDError
from ._options import (
    EXIT_BUSY,
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_EXEC_FAILED,
    EXIT_INTERRUPTED,
    EXIT_LIFECYCLE_FAILED,
    EXIT_NO_DEVICE,
    EXIT_OK,
    EXIT_PERMISSION,
    EXIT_SELFTEST_FAILED,
    EXIT_TIMED_OUT,
    EXIT_USAGE,
    _UsageError,
    build_parser,
)

__all__ = [
    "EXIT_BUSY",
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_EXEC_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_LIFECYCLE_FAILED",
    "EXIT_NO_DEVICE",
    "EXIT_OK",
    "EXIT_PERMISSION",
    "EXIT_SELFTEST_FAILED",
    "EXIT_TIMED_OUT",
    "EXIT_USAGE",
    "cli",
    "main",
]

#: Each command and where it lives (a module imported when the command runs).
_COMMANDS = {
    "status": "_device:status",
    "watch": "_device:watch",
    "trigger": "_device:trigger",
    "wait-watchers": "_device:wait_watchers",
    "selftest": "_device:selftest",
    "demo": "_device:demo",
    "prepare": "_lifecycle:lifecycle",
    "resume": "_lifecycle:lifecycle",
    "wait-ready": "_lifecycle:wait_ready",
    "simulate": "_simulate:simulate",
}


def _registry_permission_error() -> type[Exception]:
    """Imported only when an error reaches the handler: the device's commands never load the
    restore layer."""
    from ..restore.registry import RegistryPermissionError

    return RegistryPermissionError


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    module, _, function = _COMMANDS[name].partition(":")
    run: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(f"{__name__}.{module}"), function)
    return run


def cli(*args: str) -> int:
    """Run the command line with ``args``; returns the exit status."""
    try:
        options = build_parser().parse_args(args)
    except _UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    try:
        return int(_command(options.command)(options))
    except DeviceNotFoundError as exc:
        print(f"sysgenid-async: {exc}", file=sys.stderr)
        return EXIT_NO_DEVICE
    except (DevicePermissionError, _registry_permission_error()) as exc:
        print(f"sysgenid-async: {exc}", file=sys.stderr)
        return EXIT_PERMISSION
    except SysGenIDError as exc:
        print(f"sysgenid-async: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    return cli(*(sys.argv[1:] if argv is None else argv))


