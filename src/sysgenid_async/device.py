"""The thin device layer: owns one open file of the device and performs its syscalls.

No event loop here. Everything is non-blocking except :meth:`Device.wait_watchers`,
which blocks in the kernel (in slices, so that a close or a signal is seen promptly).
The async handle and the blocking twin are built on this class.
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
import time
import weakref
from collections.abc import Iterator
from typing import Literal

from . import uapi
from .errors import (
    AbiMismatchError,
    DeviceClosedError,
    ForkedHandleError,
    NotASysGenIDDeviceError,
    ReadOnlyHandleError,
    StaleGenerationError,
    UnsupportedByAbiError,
    map_os_errors,
)
from .rawfile import RawFile, open_raw
from .uapi import Abi

__all__ = ["AbiChoice", "Device", "DeviceHandle", "WaitResult", "resolve_device_path", "validate_generation"]

AbiChoice = Abi | Literal["auto", "v4", "v8"]

#: Longest single WAIT_WATCHERS call; a close or cancel waits at most this long.
WAIT_SLICE_SECONDS = 0.05


class SlicedWait:
    """A deadline (``wait_watchers``, the restore gate's waits), handed out as slices of at
    most 50 ms, so that a close, a cancel or a signal is seen promptly."""

    def __init__(self, timeout: object) -> None:
        seconds = validate_timeout(timeout)
        self._deadline = None if seconds is None else time.monotonic() + seconds

    def next_slice(self) -> float:
        if self._deadline is None:
            return WAIT_SLICE_SECONDS
        return min(max(self._deadline - time.monotonic(), 0.0), WAIT_SLICE_SECONDS)

    def expired(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline


class WaitResult(enum.Enum):
    """How a wait for the other watchers ended."""

    #: No watcher is outdated any more.
    CAUGHT_UP = "caught-up"
    #: The timeout ran out with watchers still outdated.
    TIMED_OUT = "timed-out"
    #: This handle itself has not acknowledged the current generation: read, handle, ack, retry.
    CALLER_OUTDATED = "caller-outdated"


def resolve_device_path(path: str | os.PathLike[str] | None = None) -> str:
    """The device path: the argument, else ``$SYSGENID_DEVICE``, else ``/dev/sysgenid``."""
    if path is None:
        return os.environ.get(uapi.DEVICE_ENV_VAR) or uapi.DEFAULT_DEVICE_PATH
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"device path must be a str or os.PathLike, not {type(path).__name__}")
    return os.fspath(path)


def validate_generation(value: object, name: str = "generation") -> int:
    """Check that ``value`` is a u32 before any syscall sees it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= uapi.GENERATION_MAX:
        raise ValueError(f"{name} must be in 0..{uapi.GENERATION_MAX}, got {value}")
    return value


def validate_timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"timeout must be >= 0 seconds, got {value}")
    return None if math.isinf(value) else float(value)


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

    Use :meth:`open`. Not async; operations other than :meth:`wait_watchers` never block.
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
        self._in_flight = 0
        self._close_requested = False
        with map_os_errors("map", path):
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
    ) -> Device:
        """Open the device non-blocking and map its page.

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
        with map_os_errors("open", resolved):
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

    def _enter(self) -> None:
        with self._lock:
            if self._pid != _pid:
                raise ForkedHandleError(
                    f"{self.path}: this handle was opened by process {self._pid} before a fork; "
                    "open a new one in the child (acknowledging here would ack for the parent)"
                )
            if self._close_requested:
                raise DeviceClosedError(f"{self.path}: the handle is closed")
            self._in_flight += 1

    def _exit(self) -> None:
        with self._lock:
            self._in_flight -= 1
            last = self._close_requested and self._in_flight == 0
        if last:
            self._release()

    @contextlib.contextmanager
    def using_fd(self) -> Iterator[int]:
        """Keep the descriptor open (a concurrent close is deferred) while polling on it."""
        self._enter()
        try:
            yield self._raw.fileno()
        finally:
            self._exit()

    def read_nowait(self) -> int | None:
        """The generation this handle has not acknowledged yet, or None when up to date."""
        self._enter()
        try:
            with map_os_errors("read", self.path):
                try:
                    data = self._raw.read(uapi.GENERATION_SIZE)
                except BlockingIOError:
                    return None
        finally:
            self._exit()
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
            with map_os_errors("ack", self.path):
                try:
                    self._raw.write(generation.to_bytes(uapi.GENERATION_SIZE, sys.byteorder))
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    raise StaleGenerationError(generation, self.generation) from None
            self.acknowledged = generation
        finally:
            self._exit()

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
        return self._ioctl("outdated", uapi.SYSGENID_GET_OUTDATED_WATCHERS, 0)

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
        self._ioctl("tracking", uapi.SYSGENID_V8_SET_WATCHER_TRACKING, int(enabled))
        self.watcher = enabled

    def trigger(self, min_generation: int = 0) -> int:
        """Force a generation change to ``max(min_generation, current + 1)`` (u32, wrapping).

        Needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN. Returns the generation the
        device reports afterwards (another change may already have followed).
        """
        validate_generation(min_generation, "min_generation")
        self._ioctl("trigger", self.abi.trigger_request, min_generation)
        return self.generation

    def _ioctl(self, operation: str, request: int, arg: int) -> int:
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
            with map_os_errors("wait", self.path):
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

    def wait_watchers(self, timeout: float | None = None) -> WaitResult:
        """Block until no watcher is outdated, the timeout runs out, or this handle is outdated.

        Waits in slices of at most 50 ms, so that a close from another thread and
        Python's signal handlers take effect promptly.
        """
        wait = SlicedWait(timeout)
        while True:
            result = self.wait_watchers_slice(wait.next_slice())
            if result is not WaitResult.TIMED_OUT or wait.expired():
                return result

    # -- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the handle. Idempotent; a call in flight in another thread finishes first."""
        with self._lock:
            if self._close_requested:
                return
            self._close_requested = True
            self._fd = -1  # the number may be reused by the next open: never hand it out again
            last = self._in_flight == 0
        self._view = _ClosedView(self.path)
        if last:
            self._release()

    def _release(self) -> None:
        self._finalizer()

    def _release_in_child(self) -> None:
        """After fork, in the child: drop this process's references to the parent's file."""
        self._lock = threading.Lock()  # another thread of the parent may have held it
        if self._close_requested:
            return
        self._close_requested = True
        self._fd = -1
        self._view = _ForkedView(self.path)
        with contextlib.suppress(BufferError, OSError):
            self._finalizer()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._close_requested else f"fd={self._fd}"
        return f"<Device {self.path} abi={self.abi.value} {state}>"


class DeviceHandle:
    """What the async handle and the blocking twin share: a :class:`Device` and its plain calls."""

    def __init__(self, device: Device) -> None:
        self._device = device

    @property
    def device(self) -> Device:
        """The underlying thin device handle."""
        return self._device

    @property
    def path(self) -> str:
        return self._device.path

    @property
    def abi(self) -> Abi:
        return self._device.abi

    @property
    def closed(self) -> bool:
        return self._device.closed

    @property
    def generation(self) -> int:
        """The current generation from the mapped page: one memory read, no syscall."""
        return self._device._view[0]  # not via Device.generation: one property call, not two

    def ack(self, generation: int) -> None:
        """Acknowledge ``generation``; :class:`StaleGenerationError` if the device moved on."""
        self._device.ack(generation)

    def outdated_watchers(self) -> int:
        """How many watchers have not acknowledged (v4 only; v8 raises UnsupportedByAbiError)."""
        return self._device.outdated_watchers()

    def trigger(self, min_generation: int = 0) -> int:
        """Force a generation change (privileged); returns the generation afterwards."""
        return self._device.trigger(min_generation)


def _probe_abi(raw: RawFile, path: str) -> Abi:
    with map_os_errors("probe", path):
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
