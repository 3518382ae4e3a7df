"""``watch()``: the generation changes as an async iterator.

    async with watch() as changes:
        async for generation in changes:
            rebuild_unique_state()      # acknowledged when the loop body finishes without an error

A generation is acknowledged when the loop body finishes without an error: the loop asking
for the next one, or the ``async with`` block exiting without an error, does it. A body that raises leaves it
unacknowledged, and a new ``async for`` over the same watch delivers it again. The block
closes the device; a watch left to the garbage collector is closed there too, with a
``ResourceWarning``, since when that happens is not something to rely on. A cancel that
reaches the iteration closes the watch at once.
"""

from __future__ import annotations

import os
import warnings
from types import TracebackType

import anyio
from anyio.abc import AsyncResource

from .async_device import AsyncSysGenID
from .device import AbiChoice
from .errors import DeviceClosedError

__all__ = ["watch"]


class watch(AsyncResource):  # noqa: N801 - used like a function: ``async for gen in watch()``
    """Yield each new generation of the device; acknowledge it when the loop body is done.

    - The generation yielded is acknowledged when the loop body finishes without an
      error: the next iteration starting, or ``async with`` exiting without an error,
      does it. A body that raises leaves it unacknowledged; a new ``async for``
      over the same watch yields it again.
    - Changes that pile up while the body runs coalesce to the latest: none is
      reported twice.
    - ``ack=False`` never acknowledges: the file is closed before the body runs and a
      fresh one opened for the next wait, so this watcher never holds an orchestrator
      back (not even while its body runs), but never counts as caught up.
    - :meth:`aclose` (from another task or thread too) ends the iteration.

    The device is opened by the call itself (so a missing device raises here), and
    every change from then on is reported. A cancel that reaches the iteration closes
    the watch: a cancelled iteration does not resume.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        abi: AbiChoice = "auto",
        ack: bool = True,
    ) -> None:
        if not isinstance(ack, bool):
            raise TypeError(f"ack must be a bool, not {type(ack).__name__}")
        self._path = path
        self._abi = abi
        self._ack = ack
        self._pending: int | None = None
        self._last_reported: int | None = None
        self._closed = False
        # Opened now, so that every change from this call on is seen.
        self._handle: AsyncSysGenID | None = AsyncSysGenID.open(path, abi=abi, watcher=ack)

    @property
    def handle(self) -> AsyncSysGenID:
        """The open handle."""
        if self._handle is None:
            if self._closed:
                raise DeviceClosedError("this watch() has been closed")
            self._handle = AsyncSysGenID.open(self._path, abi=self._abi, watcher=self._ack)
        return self._handle

    def __aiter__(self) -> watch:
        # A new loop over this watch: the last one left its body without asking for the next
        # generation (an error, or a break), so what it was handling is not acknowledged.
        self._pending = None
        return self

    async def __anext__(self) -> int:
        if self._closed:
            raise StopAsyncIteration
        try:
            if self._ack:  # inline, not a coroutine of its own: one frame less per change
                handle = self.handle
                pending, self._pending = self._pending, None
                if pending is not None:
                    handle.ack_unless_moved_on(pending)  # a newer one is read next: changes coalesce
                generation = await handle.wait_for_change()
                self._pending = generation
                return generation
            return await self._next_without_ack()
        except DeviceClosedError:
            if self._closed:
                raise StopAsyncIteration from None
            raise
        except anyio.get_cancelled_exc_class():
            # The loop around us is being torn down. The event loop may keep the
            # cancellation's traceback (and so this object) alive for a while: close now.
            self.close()
            raise

    async def _next_without_ack(self) -> int:
        handle = self.handle  # a fresh file after the last change: it starts up to date
        if self._last_reported is not None and handle.generation != self._last_reported:
            generation = handle.generation  # it changed while the body ran
        else:
            generation = await handle.wait_for_change()
        self._last_reported = generation
        # Closed before the body runs: an outdated file would hold orchestrators back.
        self._handle = None
        handle.close()
        return generation

    def acknowledge(self) -> None:
        """Acknowledge the generation last yielded now, before the next iteration would."""
        pending, self._pending = self._pending, None
        if pending is not None and self._handle is not None:
            self._handle.ack_unless_moved_on(pending)

    def close(self) -> None:
        """Close the device; an iteration waiting on it ends (StopAsyncIteration)."""
        self._closed = True
        if self._handle is not None:
            self._handle.close()

    async def aclose(self) -> None:
        self.close()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close (AsyncResource's exit), acknowledging first when the block finished without an error."""
        try:
            if exc_type is None and not self._closed:
                self.acknowledge()  # the block finished its work: the last generation is handled
        finally:
            self.close()

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and not handle.closed:
            handle.close()  # first: the warning may be raised as an error
            warnings.warn(
                f"watch({self._path!r}) was not closed: use 'async with watch() as changes:'",
                ResourceWarning, stacklevel=2, source=self,
            )
