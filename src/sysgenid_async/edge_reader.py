"""The persistent reader of one handle on one asyncio (or uvloop) loop.

The device's file is readable for as long as it has not acknowledged, so a reader left
registered on the file itself would fire on every loop iteration while ``watch()``'s body
runs. This reader puts the file in a private epoll instance with ``EPOLLET`` and gives the
loop that instance's descriptor: it becomes readable once per change (one ``epoll_wait(0)``
drains it), so the loop's reader stays registered from the handle's first wait on that loop
to its close, and a wait costs a future instead of an ``add_reader``/``remove_reader`` pair.
(trio keeps ``wait_readable``: its registration already lasts between waits.)

It is a waiter of the device's one registry (:class:`~sysgenid_async.device.Waiter`):

- **Who changes its state.** ``_future`` and ``_pending`` are touched on the loop's thread
  only (the waiting task, and the loop's reader callback). ``_epoll`` is closed on the loop's
  thread, or by any thread once the loop is closed (nothing can run on it any more).
- **Edges are never lost.** An edge that finds no task waiting leaves ``_pending`` set; the
  next wait consumes it and reads. Registering the file reports it once if it is already
  readable. A spare edge costs one read that finds nothing.
- **Close.** :meth:`wake` never needs the device's descriptor (the loop watches the private
  instance, and the kernel drops the file from it when the file closes), so the device's
  close goes ahead at once; the reader leaves the loop and closes its instance on the loop's
  thread, and wakes its task, which sees the handle closed.
"""

from __future__ import annotations

import contextlib
import select
import threading
from typing import TYPE_CHECKING

from .device import Device, concurrent_wait_error
from .errors import DeviceClosedError

if TYPE_CHECKING:
    import asyncio

__all__ = ["EdgeReader"]

_EDGE = select.EPOLLIN | select.EPOLLET


class EdgeReader:
    """Registered with ``device`` and with ``loop`` until the device closes or the loop is closed."""

    __slots__ = ("_device", "_epoll", "_future", "_pending", "_thread", "loop")

    def __init__(self, device: Device, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._device = device
        self._thread = threading.get_ident()
        self._future: asyncio.Future[None] | None = None
        self._pending = False
        self._epoll = select.epoll(1)
        try:
            fd = device.add_waiter(self)
        except BaseException:
            self._epoll.close()
            raise
        try:
            self._epoll.register(fd, _EDGE)
            loop.add_reader(self._epoll.fileno(), self._on_edge)
        except BaseException:
            device.remove_waiter(self)
            self._epoll.close()
            raise

    async def wait(self) -> None:
        """Return after an edge (one that came while no task waited counts); the caller reads.
        Raises :class:`DeviceClosedError` once the handle is closed."""
        if self._future is not None:
            raise concurrent_wait_error(self._device.path)
        if self._pending:
            self._pending = False
        else:
            if self._epoll.closed:
                raise DeviceClosedError(f"{self._device.path}: the handle is closed")
            future = self._future = self.loop.create_future()
            try:
                await future
            finally:
                self._future = None
        if self._epoll.closed:
            raise DeviceClosedError(f"{self._device.path}: the handle was closed while waiting")

    def _on_edge(self) -> None:
        with contextlib.suppress(ValueError, OSError):  # closed by a wake that came first
            self._epoll.poll(0, 1)
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)
        else:
            self._pending = True

    def _leave(self) -> None:
        """On the loop's thread: off the loop, instance closed, the waiting task woken."""
        if self._epoll.closed:
            return
        with contextlib.suppress(RuntimeError):  # uvloop refuses once closed: nothing registered then
            self.loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
        future = self._future
        if future is not None and not future.done() and not self.loop.is_closed():  # else it never resumes
            future.set_result(None)

    def wake(self, fd: int) -> bool:
        """The device is closing: leave, on the loop's thread; the device need not wait for it."""
        if self.loop.is_closed() or self._thread == threading.get_ident():
            self._leave()
        else:
            try:
                self.loop.call_soon_threadsafe(self._leave)
            except RuntimeError:  # closed meanwhile
                self._leave()
        return False

    def after_fork_in_child(self) -> None:
        """The child's copy of the instance is the parent's instance: let go of it here."""
        self._epoll.close()

    def drop(self) -> None:
        """Leave the device's registry and the loop: the loop was closed (called on any thread)."""
        self._leave()
        self._device.remove_waiter(self)
