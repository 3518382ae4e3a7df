"""The exception hierarchy, and the one place where errno values become exceptions.

Every error the library raises derives from :class:`SysGenIDError`. Where a standard
exception fits, the class derives from it too, so ``except PermissionError`` and
``except FileNotFoundError`` keep working.
"""

from __future__ import annotations

import enum
import errno
import os
import stat

from .uapi import TRIGGER_CAPABILITIES

__all__ = [
    "AbiMismatchError",
    "DeviceClosedError",
    "DeviceIOError",
    "DeviceNotFoundError",
    "DevicePermissionError",
    "ConcurrentWaitError",
    "ForkedHandleError",
    "NotASysGenIDDeviceError",
    "ReadOnlyHandleError",
    "RestorePendingError",
    "RestoreWatcherRunningError",
    "SimulatorProcessError",
    "StaleGenerationError",
    "SysGenIDError",
    "TriggerPermissionError",
    "UnsupportedByAbiError",
    "Operation",
    "map_os_errors",
]


class SysGenIDError(Exception):
    """Base class of every error raised by sysgenid-async."""


class _MessageOSError(OSError):
    """An OSError whose ``str()`` is its message alone (no ``[Errno N]`` prefix)."""

    def __init__(self, errno_value: int | None, message: str, path: str | None = None) -> None:
        super().__init__(errno_value, message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return self.message


class DeviceNotFoundError(SysGenIDError, _MessageOSError, FileNotFoundError):
    """The device node does not exist (or has no driver behind it)."""


class DevicePermissionError(SysGenIDError, _MessageOSError, PermissionError):
    """The caller lacks a permission the operation needs; the message names it."""


class TriggerPermissionError(DevicePermissionError):
    """Forcing a generation change needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN."""


class NotASysGenIDDeviceError(SysGenIDError, _MessageOSError):
    """The path exists but is not a sysgenid device (a regular file, /dev/null, ...)."""


class AbiMismatchError(SysGenIDError):
    """The ABI forced by the caller is not the one the device speaks."""


class UnsupportedByAbiError(SysGenIDError):
    """The operation does not exist in the ABI this device speaks."""


class StaleGenerationError(SysGenIDError, ValueError):
    """An acknowledgement named a generation that is no longer the current one."""

    def __init__(self, acked: int, current: int) -> None:
        if acked > current:
            reason = f"the device is at generation {current}, it has not reached {acked}"
        else:
            reason = f"the device has moved on to {current}"
        super().__init__(f"cannot acknowledge generation {acked}: {reason}")
        self.acked = acked
        self.current = current


class DeviceClosedError(SysGenIDError):
    """The handle was closed (possibly by another task while this one waited)."""


class ConcurrentWaitError(SysGenIDError, RuntimeError):
    """A second task of the same event loop waited on a handle that one of its tasks waits on.

    One task per event loop may wait on a handle (threads, and tasks on other loops, may
    wait beside it). Share the changes through the restore watcher's subscriptions, or open
    a handle per task.
    """


class ReadOnlyHandleError(SysGenIDError):
    """An acknowledgement (or tracking) was asked of a probe-only handle.

    ``watcher=False`` opens the device read-only, so that a service that only probes
    works with a node it may only read; such a handle cannot acknowledge. Open with
    ``watcher=True`` (the default) to watch.
    """


class ForkedHandleError(SysGenIDError):
    """A handle opened before ``fork()`` was used in the child.

    The child shares the parent's open file, so acknowledging there would acknowledge
    for the parent. Open a new handle in the child instead.
    """


class SimulatorProcessError(DeviceNotFoundError):
    """A simulated device was opened from a process other than the one that installed it.

    The simulator lives in one process's memory: a child made by ``fork`` holds a copy that
    nobody else sees, and a child made by ``spawn`` has none. Tests across processes need
    the kernel device.
    """


class RestorePendingError(SysGenIDError):
    """A value was asked for before the restore hooks for the current generation succeeded.

    Handing it out would hand out state from before the restore. ``generation`` is the
    generation being restored; ``waiting_for`` names the hook that has not run or failed.
    Wait with ``await restored()`` (or behind a readiness gate) before building values.
    """

    def __init__(self, generation: int, message: str, waiting_for: str | None = None) -> None:
        super().__init__(f"generation {generation}: {message}")
        self.generation = generation
        self.waiting_for = waiting_for


class RestoreWatcherRunningError(SysGenIDError, RuntimeError):
    """A second restore watcher was started on a registry that one already serves.

    Each would run every hook: one watcher per registry (per process, for the default one).
    """


class DeviceIOError(SysGenIDError, _MessageOSError):
    """An unexpected error from the device; ``errno`` tells which."""


def _device_hint(path: str) -> str:
    return (
        f"{path}: no sysgenid device. Load a driver for it (this project's kernel/ module: "
        f"'insmod sysgenid.ko'), or point SYSGENID_DEVICE or --device at the right path; to try a "
        f"program without one, run it on the simulator: 'sysgenid-async simulate program.py'"
    )


class Operation(enum.Enum):
    """What the device was asked to do when an errno came back: it decides what the errno means."""

    OPEN = "open"
    READ = "read"
    ACK = "ack"
    PROBE = "probe"
    MAP = "map"
    TRIGGER = "trigger"
    TRACKING = "tracking"
    WAIT = "wait"
    OUTDATED = "outdated"


class map_os_errors:  # noqa: N801 - used like a function: ``with map_os_errors(Operation.READ, path):``
    """Turn an ``OSError`` raised inside the block into the library's typed error.

    A class, not a generator-based context manager: it wraps every read and ack, so it
    must be cheap.
    """

    __slots__ = ("operation", "path")

    def __init__(self, operation: Operation, path: str) -> None:
        if not isinstance(operation, Operation):
            raise TypeError(f"operation must be an Operation, not {operation!r}")
        self.operation = operation
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, OSError) and not isinstance(exc, SysGenIDError):
            raise _translate(exc, self.operation, self.path) from exc


_ACCESS_HINT = (
    "watching and acknowledging need read and write access, probing needs read access. "
    "A udev rule grants them to a group (kernel/60-sysgenid.rules; docs/drivers.md)"
)


def _node_owner(path: str) -> str:
    """`` (mode 0600, owner uid 0, group gid 0)``, or nothing when the node cannot be looked at."""
    try:
        info = os.stat(path)
    except OSError:
        return ""
    return f" (mode {stat.S_IMODE(info.st_mode):04o}, owner uid {info.st_uid}, group gid {info.st_gid})"


def _translate(exc: OSError, operation: Operation, path: str) -> SysGenIDError:
    code = exc.errno
    reason = exc.strerror or str(exc)
    if code == errno.EBADF:
        return DeviceClosedError(f"{path}: the handle is closed")
    if operation is Operation.OPEN:
        if code in (errno.ENOENT, errno.ENXIO, errno.ENODEV):
            return DeviceNotFoundError(code, _device_hint(path), path)
        if code in (errno.EACCES, errno.EPERM):
            return DevicePermissionError(code, f"{path}: permission denied{_node_owner(path)}; {_ACCESS_HINT}", path)
        if code in (errno.EISDIR, errno.ENOTDIR):
            return NotASysGenIDDeviceError(code, f"{path}: not a sysgenid device ({reason})", path)
    if operation is Operation.TRIGGER and code in (errno.EACCES, errno.EPERM):
        return TriggerPermissionError(
            code,
            f"{path}: forcing a generation change needs {' or '.join(sorted(TRIGGER_CAPABILITIES))}",
            path,
        )
    if operation in (Operation.PROBE, Operation.MAP) and code in (
        errno.ENOTTY, errno.ENODEV, errno.EINVAL, errno.EACCES, errno.ENOSYS,
    ):
        what = "answer the sysgenid query" if operation is Operation.PROBE else "map the generation page"
        return NotASysGenIDDeviceError(code, f"{path}: not a sysgenid device (cannot {what}: {reason})", path)
    return DeviceIOError(code, f"{path}: {operation.value} failed: {reason}", path)
