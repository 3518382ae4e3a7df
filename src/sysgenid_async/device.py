"""The device layer: one open file of the device, its syscalls, and the registry of its waiters.

No event loop here. Every operation is non-blocking except :meth:`Device.wait_readable`
(a thread's blocking wait) and :meth:`Device.wait_watchers_slice` (one bounded
WAIT_WATCHERS call). The async handle (:class:`~sysgenid_async.AsyncSysGenID`) and the
blocking one (:class:`~sysgenid_async.BlockingSysGenID`) are this class plus their waits.

Every wait, a thread's or a task's, registers here with its own way of being woken
(:class:`Waiter`). :meth:`Device.close` marks the handle closed, wakes every registered
waiter, and closes the file once the last of them (and every syscall in flight) has left,
so that no waiter ever polls a number that a later ``open`` may reuse.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import math
import os
import select
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Literal, Protocol, TypedDict

from . import uapi
from .errors import (
    AbiMismatchError,
    ConcurrentWaitError,
    DeviceClosedError,
    ForkedHandleError,
    NotASysGenIDDeviceError,
    Operation,
    ReadOnlyHandleError,
    StaleGenerationError,
    UnsupportedByAbiError,
    map_os_errors,
)
from .rawfile import RawFile, open_raw
from .timeouts import Deadline
from .uapi import Abi

if TYPE_CHECKING:  # typing_extensions costs a tenth of the package's import
    from typing_extensions import Self

__all__ = ["AbiChoice", "Device", "WaitResult", "Waiter", "resolve_device_path", "validate_generation"]

AbiChoice = Abi | Literal["auto", "v4", "v8"]


class OpenOptions(TypedDict, total=False):
    """How to open the device, besides its path (see :meth:`Device.open`)."""

    abi: AbiChoice
    watcher: bool


class WaitResult(enum.Enum):
    """How a wait for the other watchers ended."""

    #: No watcher is outdated any more.
    CAUGHT_UP = "caught-up"
    #: The timeout ran out with watchers still outdated.
    TIMED_OUT = "timed-out"
    #: This handle itself has not acknowledged the current generation: read, handle, ack, retry.
    CALLER_OUTDATED = "caller-outdated"


class Waiter(Protocol):
    """One wait on a :class:`Device`, as the waiter registry sees it."""

    #: The event loop the waiter runs on (its native token), or None for a thread. Two
    #: waiters of one loop on one handle are refused: a loop watches an fd for one task.
    @property
    def loop(self) -> object | None: ...

    def wake(self, fd: int) -> bool:
        """Called by :meth:`Device.close`, in the closing thread, before ``fd`` is closed.

        Returns True when the waiter will leave by itself (and unregister); False when it
        need not be waited for (its event loop has gone, or it never used ``fd`` itself):
        the registry then lets go on its behalf.
        """
        ...

    def after_fork_in_child(self) -> None:
        """In a child after fork, where the waiter's thread or loop does not run: let go of
        whatever the waiter holds besides the device."""
        ...


def concurrent_wait_error(path: str) -> ConcurrentWaitError:
    """What a second task of one event loop gets when it waits on a handle already waited on."""
    return ConcurrentWaitError(
        f"{path}: another task of this event loop is already waiting on this handle; "
        "one task per loop may wait on a handle (subscribe to the restore watcher, or open "
        "a handle per task)"
    )


def resolve_device_path(path: str | os.PathLike[str] | None = None) -> str:
    """The device path: the argument, else ``$SYSGENID_DEVICE``, else ``/dev/sysgenid``."""
    if path is None:
        return os.environ.get(uapi.DEVICE_ENV_VAR) or uapi.DEFAULT_DEVICE_PATH
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"device path must be a str or os.PathLike, not {type(path).__name__}")
    resolved = os.fspath(path)
    if not resolved:
        raise ValueError("device path is empty (None means $SYSGENID_DEVICE, then /dev/sysgenid)")
    return resolved


def validate_generation(value: object, name: str = "generation") -> int:
    """Check that ``value`` is a u32 before any syscall sees it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= uapi.GENERATION_MAX:
        raise ValueError(f"{name} must be in 0..{uapi.GENERATION_MAX}, got {value}")
    return value


def _coerce_abi(abi: object) -> Abi | None:
    if abi == "auto":
        return None
    try:
        return Abi(abi)
    except ValueError:
        raise ValueError(f"abi must be 'auto', 'v4' or 'v8', not {abi!r}") from None


# Fork guard: a handle opened in another process must not ack (the open file is shared).
_pid = os.getpid()
# Every open Device, so that a child after fork can let go of the parent's files.
_open_devices: weakref.WeakSet[Device] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Release, in the child, every file the parent had open: the child holds a reference
    to each open file (and its mapping), which would keep the parent's watchers alive, and
    counted as outdated, for as long as the child lives. The handles stay unusable here
    (:class:`ForkedHandleError`); the parent's files are untouched."""
    global _pid
    _pid = os.getpid()
    for device in list(_open_devices):
        device._release_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _ClosedView:
    """Stands in for the page view after close, so the probe needs no closed check."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __getitem__(self, index: int) -> int:
        raise DeviceClosedError(f"{self.path}: the handle is closed")


class _ForkedView(_ClosedView):
    """Stands in for the page view of a parent's handle in a child after fork."""

    __slots__ = ()

    def __getitem__(self, index: int) -> int:
        raise ForkedHandleError(f"{self.path}: this handle belongs to the parent process; open a new one")


class Device:
    """One open file of the device: a watcher (v4 always; v8 when tracking is on).

    Use :meth:`open`. The fd layer: its operations never block, except
    :meth:`wait_readable` and :meth:`wait_watchers_slice`.
    """

    def __init__(self, raw: RawFile, path: str, abi: Abi, *, watcher: bool, readonly: bool = False) -> None:
        self._raw = raw
        self._fd = raw.fileno()
        self.path = path
        self.abi = abi
        #: Whether this handle counts among the device's watchers (v4: always).
        self.watcher = watcher or abi.every_fd_is_a_watcher
        #: Opened read-only, for probing: it cannot acknowledge.
        self.readonly = readonly
        self._pid = _pid
        self._lock = threading.Lock()
        # Syscalls and waits in progress: the file is closed only when the last one leaves.
        self._in_flight = 0
        self._waiters: list[Waiter] = []
        # Written by close() to wake the threads blocked in wait_readable(); made on first use.
        self._thread_wakeup = -1
        self._close_requested = False
        # The mappings around the two syscalls of every wake-up, made once: they hold no state.
        self._read_errors = map_os_errors(Operation.READ, path)
        self._ack_errors = map_os_errors(Operation.ACK, path)
        with map_os_errors(Operation.MAP, path):
            page = raw.map_page()
        self._page = page
        self._view: memoryview | _ClosedView = page.cast("I")
        #: The generation this handle last acknowledged; at first, the one it opened at
        #: (a new file starts up to date). A hint that spares a read; poll is the truth.
        self.acknowledged: int = self._view[0]
        self._finalizer = weakref.finalize(self, _close_quietly, raw, page, self._view)
        _open_devices.add(self)

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        abi: AbiChoice = "auto",
        watcher: bool = True,
    ) -> Self:
        """Open the device non-blocking and map its page.

        ``path`` defaults to ``$SYSGENID_DEVICE``, then ``/dev/sysgenid``.
        ``abi="auto"`` probes with the v4 query (side-effect free on both ABIs).
        ``watcher=False`` opens for probing only: read-only (a node the caller may only
        read will do), and on v8 the file does not enable tracking. Such a handle cannot
        acknowledge (:class:`~sysgenid_async.errors.ReadOnlyHandleError`). On v4 every
        open file is a watcher, whatever this says: keep a probe-only file short-lived there.
        """
        resolved = resolve_device_path(path)
        forced = _coerce_abi(abi)
        if not isinstance(watcher, bool):
            raise TypeError(f"watcher must be a bool, not {type(watcher).__name__}")
        with map_os_errors(Operation.OPEN, resolved):
            raw = open_raw(resolved, readonly=not watcher)
        try:
            if not raw.is_character_device():
                raise NotASysGenIDDeviceError(
                    None, f"{resolved}: not a sysgenid device (not a character device)", resolved
                )
            detected = _probe_abi(raw, resolved)
            if forced is not None and forced is not detected:
                raise AbiMismatchError(
                    f"{resolved}: abi {forced.value} was asked for, but the device speaks {detected.value}"
                )
            device = cls(raw, resolved, detected, watcher=watcher, readonly=not watcher)
        except BaseException:
            raw.close()
            raise
        if device.abi is Abi.V8 and watcher:
            try:
                device.set_tracking(True)
            except BaseException:
                device.close()
                raise
        return device

    # -- the fast probe ------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """The current generation, read from the mapped page: no syscall."""
        return self._view[0]

    def page_view(self) -> memoryview | None:
        """The mapped page as a u32 view (index 0 is the generation), or None once closed.

        For hot paths that cache it: once the handle is closed the view is released, and
        indexing it raises ``ValueError``, the cue to look the device up again.
        """
        view = self._view
        return view if isinstance(view, memoryview) else None

    # -- syscalls ------------------------------------------------------------------------

    def fileno(self) -> int:
        """The pollable descriptor (readable while this handle is outdated); -1 once closed."""
        return self._fd

    @property
    def closed(self) -> bool:
        return self._close_requested

    def _check_usable(self) -> None:
        """Under the lock: refuse a handle of the parent after fork, or a closed one."""
        if self._pid != _pid:
            raise ForkedHandleError(
                f"{self.path}: this handle was opened by process {self._pid} before a fork; "
                "open a new one in the child (acknowledging here would ack for the parent)"
            )
        if self._close_requested:
            raise DeviceClosedError(f"{self.path}: the handle is closed")

    def _enter(self) -> None:
        with self._lock:
            self._check_usable()
            self._in_flight += 1

    def _exit(self) -> None:
        with self._lock:
            self._in_flight -= 1
            last = self._close_requested and self._in_flight == 0
        if last:
            self._release()

    def read_nowait(self) -> int | None:
        """The generation this handle has not acknowledged yet, or None when up to date."""
        self._enter()
        try:
            return self.read_for_waiter()
        finally:
            self._exit()

    def read_for_waiter(self) -> int | None:
        """:meth:`read_nowait` for a registered waiter (:meth:`add_waiter`), whose registration
        holds the file open: no second pass through the lock."""
        with self._read_errors:
            try:
                data = self._raw.read(uapi.GENERATION_SIZE)
            except BlockingIOError:
                return None
        if len(data) != uapi.GENERATION_SIZE:
            raise NotASysGenIDDeviceError(
                None, f"{self.path}: not a sysgenid device (read returned {len(data)} bytes)", self.path
            )
        return int.from_bytes(data, sys.byteorder)

    def ack(self, generation: int) -> None:
        """Acknowledge ``generation``; :class:`StaleGenerationError` if it has moved on."""
        validate_generation(generation)
        if self.readonly:
            raise ReadOnlyHandleError(
                f"{self.path}: this handle was opened for probing only (watcher=False, read-only) and cannot "
                "acknowledge; open one with watcher=True"
            )
        self._enter()
        try:
            with self._ack_errors:
                try:
                    self._raw.write(generation.to_bytes(uapi.GENERATION_SIZE, sys.byteorder))
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    raise StaleGenerationError(generation, self.generation) from None
            self.acknowledged = generation
        finally:
            self._exit()

    def ack_unless_moved_on(self, generation: int) -> bool:
        """Acknowledge ``generation`` unless a newer one has come (that one is read next:
        changes that pile up coalesce). True if acknowledged."""
        try:
            self.ack(generation)
        except StaleGenerationError:
            return False
        return True

    def is_outdated(self) -> bool:
        """Whether this handle has not acknowledged the current generation (a zero-time poll)."""
        self._enter()
        try:
            return self._poll_in()
        finally:
            self._exit()

    def outdated_watchers(self) -> int:
        """How many watchers have not acknowledged the current generation (v4 only)."""
        if self.abi is not Abi.V4:
            raise UnsupportedByAbiError(
                f"{self.path}: counting outdated watchers is not supported by the {self.abi.value} ABI"
            )
        return self._ioctl(Operation.OUTDATED, uapi.SYSGENID_GET_OUTDATED_WATCHERS, 0)

    def set_tracking(self, enabled: bool) -> None:
        """v8: make this file count (or stop counting) among the watchers."""
        if self.abi is not Abi.V8:
            raise UnsupportedByAbiError(
                f"{self.path}: watcher tracking is a v8 operation; on {self.abi.value} every open file is a watcher"
            )
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool, not {type(enabled).__name__}")
        if enabled and self.readonly:
            raise ReadOnlyHandleError(
                f"{self.path}: a probe-only handle (watcher=False, read-only) cannot acknowledge, so it must "
                "not be tracked: every orchestrator would wait for it; open one with watcher=True"
            )
        self._ioctl(Operation.TRACKING, uapi.SYSGENID_V8_SET_WATCHER_TRACKING, int(enabled))
        self.watcher = enabled

    def trigger(self, min_generation: int = 0) -> int:
        """Force a generation change to ``max(min_generation, current + 1)`` (u32, wrapping).

        Needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN. Returns the generation the
        device reports afterwards (another change may already have followed).
        """
        validate_generation(min_generation, "min_generation")
        self._ioctl(Operation.TRIGGER, self.abi.trigger_request, min_generation)
        return self.generation

    def _ioctl(self, operation: Operation, request: int, arg: int) -> int:
        self._enter()
        try:
            with map_os_errors(operation, self.path):
                return self._raw.ioctl(request, arg)
        finally:
            self._exit()

    def wait_watchers_slice(self, timeout: float) -> WaitResult:
        """One blocking WAIT_WATCHERS call of at most ``timeout`` seconds (at least 1 ms)."""
        ms = max(1, min(math.ceil(timeout * 1000), 2**31 - 1))
        self._enter()
        try:
            with map_os_errors(Operation.WAIT, self.path):
                try:
                    self._raw.ioctl(self.abi.wait_watchers_request, ms)
                except OSError as exc:
                    # EINTR: the caller is outdated, or (v4) time ran out, or a signal
                    # arrived; ETIME: v8's timeout. Only a poll tells the first apart.
                    if exc.errno not in (errno.EINTR, errno.ETIME):
                        raise
                    return WaitResult.CALLER_OUTDATED if self._poll_in() else WaitResult.TIMED_OUT
            return WaitResult.CAUGHT_UP
        finally:
            self._exit()

    def _poll_in(self) -> bool:
        poller = select.poll()
        poller.register(self._raw.fileno(), select.POLLIN)
        return bool(poller.poll(0))

    # -- the waiter registry ---------------------------------------------------------------

    def add_waiter(self, waiter: Waiter) -> int:
        """Register ``waiter`` and return the descriptor it may wait on until :meth:`remove_waiter`.

        The descriptor stays open (a close is deferred) while the waiter is registered, and
        :meth:`close` wakes the waiter first. A second waiter of the event loop that one
        already waits from is refused (:class:`~sysgenid_async.errors.ConcurrentWaitError`).
        """
        loop = waiter.loop
        with self._lock:
            self._check_usable()
            if loop is not None and self._waiters and any(other.loop is loop for other in self._waiters):
                raise concurrent_wait_error(self.path)
            self._in_flight += 1
            self._waiters.append(waiter)
            return self._raw.fileno()

    def waiters(self) -> tuple[Waiter, ...]:
        """The waiters registered now (a snapshot)."""
        with self._lock:
            return tuple(self._waiters)

    def remove_waiter(self, waiter: Waiter) -> None:
        """The waiter has left. Idempotent: close() may have let go of it already."""
        with self._lock:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                return
            self._in_flight -= 1
            last = self._close_requested and self._in_flight == 0
        if last:
            self._release()

    def wait_readable(self, timeout: float | None = None) -> bool:
        """Block this thread until the handle is outdated (True) or ``timeout`` ran out (False).

        Raises :class:`~sysgenid_async.errors.DeviceClosedError` when the handle is closed,
        before or during the wait (a close from another thread wakes it at once).
        """
        deadline = Deadline(timeout)
        waiter = _ThreadWaiter(self)
        with self._lock:
            if self._thread_wakeup < 0 and not self._close_requested:
                self._thread_wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        fd = self.add_waiter(waiter)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.register(self._thread_wakeup, select.POLLIN)
            events = poller.poll(deadline.poll_milliseconds())
        finally:
            self.remove_waiter(waiter)
        if self._close_requested:
            raise DeviceClosedError(f"{self.path}: the handle was closed while waiting")
        return bool(events)

    # -- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the handle: idempotent, from any thread.

        Marks it closed, wakes every registered waiter (each gets DeviceClosedError), and
        closes the file once the last waiter or syscall in flight has left.
        """
        with self._lock:
            if self._close_requested:
                return
            self._close_requested = True
            fd, self._fd = self._fd, -1  # the number may be reused by the next open: never hand it out again
            waiters = list(self._waiters)
        self._view = _ClosedView(self.path)
        gone = [waiter for waiter in waiters if not waiter.wake(fd)]
        for waiter in gone:
            self.remove_waiter(waiter)
        with self._lock:
            last = self._in_flight == 0
        if last:
            self._release()

    def _release(self) -> None:
        self._finalizer()
        with self._lock:
            wakeup, self._thread_wakeup = self._thread_wakeup, -1
        if wakeup >= 0:
            os.close(wakeup)

    def _release_in_child(self) -> None:
        """After fork, in the child: drop this process's references to the parent's file."""
        self._lock = threading.Lock()  # another thread of the parent may have held it
        if self._close_requested:
            return
        self._close_requested = True
        self._fd = -1
        waiters, self._waiters = self._waiters, []  # the parent's threads and loops do not run here
        for waiter in waiters:
            waiter.after_fork_in_child()
        self._view = _ForkedView(self.path)
        with contextlib.suppress(BufferError, OSError):
            self._finalizer()
        if self._thread_wakeup >= 0:
            os.close(self._thread_wakeup)
            self._thread_wakeup = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._close_requested else f"fd={self._fd}"
        return f"<{type(self).__name__} {self.path} abi={self.abi.value} {state}>"


class _ThreadWaiter:
    """A thread blocked in :meth:`Device.wait_readable`: woken through the device's eventfd."""

    __slots__ = ("_device",)

    loop = None

    def __init__(self, device: Device) -> None:
        self._device = device

    def wake(self, fd: int) -> bool:
        os.eventfd_write(self._device._thread_wakeup, 1)
        return True

    def after_fork_in_child(self) -> None:
        return None


def _probe_abi(raw: RawFile, path: str) -> Abi:
    with map_os_errors(Operation.PROBE, path):
        try:
            raw.ioctl(uapi.SYSGENID_GET_OUTDATED_WATCHERS, 0)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return Abi.V8
            raise
    return Abi.V4


def _close_quietly(raw: RawFile, page: memoryview, view: memoryview) -> None:
    view.release()
    page.release()
    raw.close()
