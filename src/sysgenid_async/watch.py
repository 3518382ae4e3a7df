"""``watch()``: the generation changes as an async iterator.

    async for generation in watch():
        rebuild_unique_state()      # acknowledged once this body finishes without error

The iterator is a plain object, not an async generator, so leaving the loop by
``break``, an exception or a cancel drops the last reference and closes the device at
once (CPython frees it on the spot). ``async with watch() as changes:`` closes it
explicitly, which is the idiom for other interpreters.
"""

from __future__ import annotations

import contextlib
import os
from types import TracebackType

import anyio

from .async_device import AsyncSysGenID
from .device import AbiChoice
from .errors import DeviceClosedError, StaleGenerationError

__all__ = ["watch"]


class watch:  # noqa: N801 - used like a function: ``async for gen in watch()``
    """Yield each new generation of the device; acknowledge it when the loop body is done.

    - The generation yielded is acknowledged only when the next iteration starts, that
      is, after the loop body finished without error. A body that raises leaves it
      unacknowledged (the watcher then closes, as the loop is left).
    - Changes that pile up while the body runs coalesce to the latest: none is
      reported twice.
    - ``ack=False`` never acknowledges: the device is reopened after each change, so
      this watcher never holds an orchestrator back, but never counts as caught up.
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
        return self

    async def __anext__(self) -> int:
        if self._closed:
            raise StopAsyncIteration
        try:
            if self._ack:
                return await self._next_acking()
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

    async def _next_acking(self) -> int:
        handle = self.handle
        pending, self._pending = self._pending, None
        if pending is not None:
            with contextlib.suppress(StaleGenerationError):
                handle.ack(pending)  # stale: a newer generation waits and is read next (coalescing)
        generation = await handle.wait_for_change()
        self._pending = generation
        return generation

    async def _next_without_ack(self) -> int:
        if self._last_reported is not None and self._handle is not None:
            # Reopen: a fresh file starts up to date, so poll waits for the next change.
            self._handle.close()
            self._handle = None
            if self.handle.generation != self._last_reported:
                self._last_reported = self.handle.generation
                return self._last_reported
        generation = await self.handle.wait_for_change()
        self._last_reported = generation
        return generation

    def close(self) -> None:
        """Close the device; an iteration waiting on it ends (StopAsyncIteration)."""
        self._closed = True
        if self._handle is not None:
            self._handle.close()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> watch:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.close()
