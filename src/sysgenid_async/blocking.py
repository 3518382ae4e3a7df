"""The blocking twin of the async handle, for threads and code without an event loop.

Same semantics; waits use ``select.poll`` with timeouts, plus an eventfd so that a
close from another thread wakes a waiting thread at once. Nothing busy-waits.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import threading
import time
from collections.abc import Iterator
from types import TracebackType

from .device import AbiChoice, Device, DeviceHandle, WaitResult, validate_timeout
from .errors import DeviceClosedError, StaleGenerationError

__all__ = ["BlockingSysGenID", "watch_blocking"]


class BlockingSysGenID(DeviceHandle):
    """An open watcher of the device, for blocking code. A context manager.

    Besides what is below: ``generation`` (the fast probe), ``ack()``,
    ``outdated_watchers()``, ``trigger()``, ``path``, ``abi``, ``closed``, ``device``.
    """

    def __init__(self, device: Device) -> None:
        super().__init__(device)
        # A close from another thread writes here to wake a thread blocked in poll().
        self._wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._lock = threading.Lock()
        self._waiters = 0

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        abi: AbiChoice = "auto",
        watcher: bool = True,
    ) -> BlockingSysGenID:
        device = Device.open(path, abi=abi, watcher=watcher)
        try:
            return cls(device)
        except BaseException:
            device.close()
            raise

    def wait_for_change(self, timeout: float | None = None) -> int | None:
        """Block until this handle has an unacknowledged generation; None on timeout."""
        timeout = validate_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        device = self._device
        while True:
            generation = device.read_nowait()
            if generation is not None:
                return generation
            if deadline is None:
                wait_ms = -1
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                wait_ms = math.ceil(remaining * 1000)
            with device.using_fd() as fd:
                with self._lock:
                    if self._wakeup < 0:  # closed between the check and here
                        raise DeviceClosedError(f"{device.path}: the handle is closed")
                    self._waiters += 1
                    wakeup = self._wakeup
                try:
                    poller = select.poll()
                    poller.register(fd, select.POLLIN)
                    poller.register(wakeup, select.POLLIN)
                    events = poller.poll(wait_ms)
                finally:
                    with self._lock:
                        self._waiters -= 1
                        if device.closed and not self._waiters:
                            self._close_wakeup()
            if any(ready_fd == wakeup for ready_fd, _ in events):
                raise DeviceClosedError(f"{device.path}: the handle was closed while waiting")

    def wait_watchers(self, timeout: float | None = None) -> WaitResult:
        """Block until every watcher has acknowledged (see :meth:`Device.wait_watchers`)."""
        return self._device.wait_watchers(timeout)

    def close(self) -> None:
        """Idempotent; a thread blocked in :meth:`wait_for_change` gets DeviceClosedError."""
        with self._lock:
            if self._device.closed:
                return
            self._device.close()
            if self._waiters:
                os.eventfd_write(self._wakeup, 1)  # the last waiter closes it on its way out
            else:
                self._close_wakeup()

    def _close_wakeup(self) -> None:
        if self._wakeup >= 0:
            os.close(self._wakeup)
            self._wakeup = -1

    def __del__(self) -> None:
        if getattr(self, "_wakeup", -1) >= 0:
            self._close_wakeup()

    def __enter__(self) -> BlockingSysGenID:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class watch_blocking:  # noqa: N801 - used like a function
    """The blocking twin of :func:`~sysgenid_async.watch`: ``for gen in watch_blocking(): ...``.

    Acknowledges each generation when the loop body finished without error; changes
    that pile up coalesce; ``timeout`` ends the iteration when no change comes in time.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        abi: AbiChoice = "auto",
        timeout: float | None = None,
    ) -> None:
        self._timeout = validate_timeout(timeout)
        self._handle: BlockingSysGenID | None = BlockingSysGenID.open(path, abi=abi)
        self._pending: int | None = None

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        handle = self._handle
        if handle is None or handle.closed:
            raise StopIteration
        pending, self._pending = self._pending, None
        if pending is not None:
            with contextlib.suppress(StaleGenerationError):  # a newer one is pending
                handle.ack(pending)
        try:
            generation = handle.wait_for_change(self._timeout)
        except DeviceClosedError:
            raise StopIteration from None
        if generation is None:
            self.close()
            raise StopIteration
        self._pending = generation
        return generation

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()

    def __enter__(self) -> watch_blocking:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None:
            self.close()
