"""The async handle: the device on an event loop, through anyio (asyncio, uvloop, trio).

Readiness comes from the loop's reader (``anyio.wait_readable``); the descriptor is
registered only while a task waits, and a close first notifies the loop
(``anyio.notify_closing``), then closes, so no loop ever watches a stale fd number.
``WAIT_WATCHERS`` blocks in the kernel whatever O_NONBLOCK says, so it runs in a worker
thread in slices of at most 50 ms: a cancel takes effect when the current slice ends.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import AsyncIterator
from types import TracebackType

import anyio
from anyio.lowlevel import checkpoint, current_token

from .device import AbiChoice, Device, DeviceHandle, SlicedWait, WaitResult
from .errors import DeviceClosedError

__all__ = ["AsyncSysGenID", "moved_on", "open_sysgenid"]


class AsyncSysGenID(DeviceHandle):
    """An open watcher of the device, for async code. Create with :func:`open_sysgenid`.

    Besides what is below: ``generation`` (the fast probe), ``ack()``,
    ``outdated_watchers()``, ``trigger()``, ``path``, ``abi``, ``closed``, ``device``.
    """

    def __init__(self, device: Device) -> None:
        super().__init__(device)
        self._waiter_thread: int | None = None
        self._waiter_token: anyio.lowlevel.EventLoopToken | None = None
        # One ticket per task polling the fd; each holds the device open (in flight).
        self._polling: set[object] = set()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        abi: AbiChoice = "auto",
        watcher: bool = True,
    ) -> AsyncSysGenID:
        """Open without a context manager; pair it with :meth:`aclose`."""
        return cls(Device.open(path, abi=abi, watcher=watcher))

    async def wait_for_change(self) -> int:
        """Wait until this handle has a generation it has not acknowledged, and return it.

        Returns at once if the handle is already behind. Raises
        :class:`~sysgenid_async.DeviceClosedError` if the handle is closed meanwhile.
        """
        device = self._device
        # Up to date by the page: skip the read, which would fail with EAGAIN, and wait.
        # After a wake-up always read, so a wrong hint cannot spin.
        read_first = device.generation != device.acknowledged
        while True:
            if read_first:
                generation = device.read_nowait()
                if generation is not None:
                    return generation
            read_first = True
            device._enter()  # the fd stays open (a close is deferred) while we poll it
            ticket = object()
            self._polling.add(ticket)
            self._waiter_thread = threading.get_ident()
            self._waiter_token = current_token()
            try:
                await anyio.wait_readable(device.fileno())
            except anyio.ClosedResourceError:
                raise DeviceClosedError(f"{device.path}: the handle was closed while waiting") from None
            finally:
                if ticket in self._polling:  # not abandoned by close() (see there)
                    self._polling.discard(ticket)
                    device._exit()

    async def wait_watchers(self, timeout: float | None = None) -> WaitResult:
        """Wait until every watcher has acknowledged the current generation.

        Returns :attr:`WaitResult.CAUGHT_UP`, :attr:`WaitResult.TIMED_OUT` or
        :attr:`WaitResult.CALLER_OUTDATED` (acknowledge first, then wait again).
        Cancellable: the worker thread's current slice (<= 50 ms) finishes first.
        """
        wait = SlicedWait(timeout)
        while True:
            from anyio import to_thread  # here, not at import: it pulls in the thread machinery

            result = await to_thread.run_sync(self._device.wait_watchers_slice, wait.next_slice())
            if result is not WaitResult.TIMED_OUT or wait.expired():
                return result

    def close(self) -> None:
        """Close the handle: idempotent; a task waiting on it gets DeviceClosedError.

        Callable from the loop's thread, another thread, or after the loop has gone.
        """
        device = self._device
        if device.closed:
            return
        fd = device.fileno()
        if self._polling:
            self._notify_waiters(fd)
            if _loop_is_closed(self._waiter_token):
                # The waiting tasks can never resume, so they would hold the file open
                # for ever: nothing polls it any more, release it now on their behalf.
                abandoned, self._polling = self._polling, set()
                for _ in abandoned:
                    device._exit()
        device.close()

    def _notify_waiters(self, fd: int) -> None:
        if self._waiter_thread == threading.get_ident():
            with contextlib.suppress(RuntimeError, LookupError):
                anyio.notify_closing(fd)
            return
        token = self._waiter_token
        if token is None:
            return
        # From another thread: let the loop drop its reader before the fd is closed.
        # If that loop is closed there is no reader left to drop.
        with contextlib.suppress(RuntimeError):
            from anyio import from_thread  # imported on first use: rarely needed, slow to import

            from_thread.run_sync(anyio.notify_closing, fd, token=token)

    async def aclose(self) -> None:
        self.close()
        await checkpoint()


    async def __aenter__(self) -> AsyncSysGenID:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<AsyncSysGenID {self._device!r}>"


@contextlib.asynccontextmanager
async def open_sysgenid(
    path: str | os.PathLike[str] | None = None,
    *,
    abi: AbiChoice = "auto",
    watcher: bool = True,
) -> AsyncIterator[AsyncSysGenID]:
    """Open the device for async use; closed when the block ends.

    ``path`` defaults to ``$SYSGENID_DEVICE``, then ``/dev/sysgenid``. ``abi`` is
    ``"auto"`` (probe), ``"v4"`` or ``"v8"``. ``watcher=False`` is for probe-only use
    (on v8 the handle does not enable tracking; on v4 every open file is a watcher).
    """
    handle = AsyncSysGenID.open(path, abi=abi, watcher=watcher)
    try:
        yield handle
    finally:
        handle.close()


async def moved_on(handle: AsyncSysGenID, generation: int, timeout: float | None) -> bool:
    """Wait up to ``timeout`` seconds (None: for ever) for the device to leave ``generation``.

    For a caller whose own file is outdated on purpose (it has not acknowledged): that file
    stays readable, so it cannot tell of the next change. A fresh, probe-only file can (it
    starts up to date), and is closed at once.
    """
    async with AsyncSysGenID.open(handle.path, abi=handle.abi, watcher=False) as sentinel:
        if sentinel.generation != generation:
            return True
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            await sentinel.wait_for_change()
            return True
    return False


def _loop_is_closed(token: anyio.lowlevel.EventLoopToken | None) -> bool:
    """Whether the event loop behind ``token`` is closed (asyncio and uvloop can tell)."""
    is_closed = getattr(getattr(token, "native_token", None), "is_closed", None)
    return bool(is_closed()) if callable(is_closed) else False
