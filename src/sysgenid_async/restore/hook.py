"""One registered hook, and how it is called: inline, awaited, or in a worker thread on a timer.

- A sync hook with no timeout runs in the caller's thread (``attempt_inline``).
- An async hook is awaited, under its timeout if it has one.
- A sync hook with a timeout runs in a worker thread, the only way to time it out. On its
  timeout the thread is left to finish, and counted: no second copy starts meanwhile. When
  the caller is cancelled, a call that had not started never starts, and one that had is
  waited for, up to its timeout, so that the next pass never overlaps it.
- A cancellation of the caller propagates; a hook that raises one by itself has failed.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from ..timeouts import Deadline
from .phases import HookError, HookKind

__all__ = ["HookFunction", "RestoreHook"]

logger = logging.getLogger("sysgenid_async.restore.hooks")  # one logger for every hook failure

#: A hook: ``hook(generation)``, sync or async.
HookFunction = Callable[[int], object]


@dataclass(eq=False, slots=True)  # one per hook, possibly thousands: no per-instance dict
class RestoreHook:
    """A registered hook."""

    name: str
    priority: int
    timeout: float | None
    sequence: int
    #: The function itself, or a weak reference to it (``weak``).
    _target: HookFunction | Callable[[], HookFunction | None] = field(repr=False)
    is_async: bool = field(repr=False, default=False)
    weak: bool = field(repr=False, default=False)

    @property
    def function(self) -> HookFunction | None:
        """The callable, or None once a weakly held one has been collected."""
        target = self._target
        return target() if self.weak else target  # type: ignore[call-arg,return-value]

    # Threads of this hook still running after a timeout: no second copy is started meanwhile.
    _abandoned: int = field(repr=False, default=0)

    @property
    def runs_inline(self) -> bool:
        """Whether a caller's thread may run it: sync, with no timeout (which needs a worker thread)."""
        return not self.is_async and self.timeout is None

    async def run(self, generation: int) -> None:
        """Run the hook once for ``generation``, raising what it raises (or ``TimeoutError``)."""
        function = self.function
        if function is None:
            return
        if self._abandoned:
            raise RuntimeError("still running from an earlier attempt that timed out")
        if self.timeout is None:
            # Whether it is async is known since registration: no test of the result per call
            # (a pass over 5,000 hooks is 5,000 calls).
            result = function(generation)
            if self.is_async:
                await result  # type: ignore[misc]
        elif self.is_async:
            with anyio.fail_after(self.timeout):
                await function(generation)  # type: ignore[misc]
        else:
            await self._run_in_thread(function, self.timeout, generation)

    async def _run_in_thread(self, function: HookFunction, timeout: float, generation: int) -> None:
        """A sync hook with a timeout, in a worker thread (see the module docstring)."""
        from anyio import to_thread  # on first use: slow to import, and most hooks need none

        call = _ThreadedCall(self, function, generation)
        deadline = Deadline(timeout)
        try:
            with anyio.move_on_after(timeout) as timer:
                await to_thread.run_sync(call.run, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            if not call.give_up():
                with anyio.CancelScope(shield=True):
                    await to_thread.run_sync(call.finished.wait, deadline.remaining())
            raise
        if timer.cancelled_caught:
            call.give_up()
            raise TimeoutError(f"{self.name} ran for more than {timeout:g} s")

    async def attempt(self, generation: int, kind: HookKind = HookKind.RESTORE) -> HookError | None:
        """Run it; its failure (logged), or None. A cancellation of the caller propagates."""
        try:
            await self.run(generation)
        except anyio.get_cancelled_exc_class() as exc:
            if _caller_cancelled():
                raise
            return self._failed(generation, exc, kind)  # the hook cancelled itself: a failure
        except Exception as exc:
            return self._failed(generation, exc, kind)
        return None

    def attempt_inline(self, generation: int) -> HookError | None:
        """Run a sync hook in this thread (see :attr:`runs_inline`); its failure, or None."""
        function = self.function
        if function is None:
            return None
        try:
            if self._abandoned:
                raise RuntimeError("still running from an earlier attempt that timed out")
            function(generation)
        except Exception as exc:
            return self._failed(generation, exc)
        return None

    def _failed(self, generation: int, exc: BaseException, kind: HookKind = HookKind.RESTORE) -> HookError:
        error = HookError(self, generation, exc, kind)
        logger.error("%s", error, exc_info=exc)
        return error


class _ThreadedCall:
    """One call of a sync hook in a worker thread: it starts at most once, and never after its
    caller gave it up (a worker may pick a call up after the caller was cancelled)."""

    __slots__ = ("_lock", "_state", "finished", "function", "generation", "hook")

    def __init__(self, hook: RestoreHook, function: HookFunction, generation: int) -> None:
        self.hook = hook
        self.function = function
        self.generation = generation
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self._state = "queued"  # then "running", or "given up" before it ran

    def run(self) -> None:
        with self._lock:
            if self._state != "queued":
                return
            self._state = "running"
        self.hook._abandoned += 1  # counted while it runs: no second copy starts meanwhile
        try:
            self.function(self.generation)
        finally:
            self.hook._abandoned -= 1
            self.finished.set()

    def give_up(self) -> bool:
        """Whether it had not started: then it never will."""
        with self._lock:
            if self._state == "queued":
                self._state = "given up"
                return True
            return False



def _caller_cancelled() -> bool:
    """Whether the task running the hooks is being cancelled (an anyio scope, or asyncio's own)."""
    if anyio.current_effective_deadline() == -math.inf:
        return True
    try:
        import asyncio

        task = asyncio.current_task()
    except RuntimeError:  # not on asyncio
        return False
    # Task.cancelling() (public since 3.11) is the one way to tell a task.cancel() of the caller,
    # which no anyio scope sees, from a CancelledError the hook raised itself: kept for that, not speed.
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if callable(cancelling) else False
