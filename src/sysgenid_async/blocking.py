"""The blocking handle, for threads and code without an event loop.

The same semantics as the async handle. A thread waits in ``poll()`` on the device and on
the device's wake-up eventfd (see :meth:`~sysgenid_async.device.Device.wait_readable`),
so a close from another thread wakes it at once. Nothing busy-waits.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from .device import AbiChoice, WaitResult
from .errors import DeviceClosedError
from .handle import Handle
from .timeouts import Deadline, validate_timeout

__all__ = ["BlockingSysGenID", "watch_blocking"]


class BlockingSysGenID(Handle):
    """An open watcher of the device, for blocking code. A context manager.

    Besides the waits below, what every handle has: ``generation`` (the fast probe),
    ``ack()``, ``outdated_watchers()``, ``trigger()``, ``path``, ``abi``, ``closed``.
    It holds its fd-layer :class:`~sysgenid_async.device.Device` (:attr:`device`).
    Any number of threads may wait on it; a close wakes them all.
    """

    def wait_for_change(self, timeout: float | None = None) -> int | None:
        """Block until this handle has an unacknowledged generation; None on timeout."""
        deadline = Deadline(timeout)
        while True:
            generation = self.device.read_nowait()
            if generation is not None:
                return generation
            if deadline.expired():
                return None
            self.device.wait_readable(deadline.remaining())

    def wait_watchers(self, timeout: float | None = None) -> WaitResult:
        """Block until no watcher is outdated, the timeout runs out, or this handle is outdated.

        Waits in slices of at most 50 ms, so that a close from another thread and
        Python's signal handlers take effect promptly.
        """
        deadline = Deadline(timeout)
        while True:
            result = self.device.wait_watchers_slice(deadline.next_slice())
            if result is not WaitResult.TIMED_OUT or deadline.expired():
                return result


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
            handle.ack_unless_moved_on(pending)
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
