"""The restore gate: a registry's one runner of hooks, and the line that requests wait behind.

Who runs the hooks (one pass at a time, under the gate's one turn):

- with a restore watcher attached, its task alone, for every kind of pass;
- with no watcher, the caller that needs them, in its own thread, sync hooks only; a second
  caller waits for it.

Shared state, all under the condition's lock, and who changes it:

- ``restored_generation``, the current restore's progress, the turn: the holder of the turn;
- the attached watcher: ``attach``/``detach``, on the watcher's own thread;
- waiters: threads on the condition, tasks on the watcher's thread on an ``anyio.Event`` per
  generation, other tasks in a worker thread on the condition; every change wakes them.

What a hook and a value may rely on:

- no hook runs concurrently with itself, nor with another hook of its registry;
- a newer generation stops a running pass at its next checkpoint (between hooks; at an
  await; a sync hook in a worker thread is waited for); the newer pass starts after it;
- a pass for a new generation invalidates every value built behind the gate;
- a value is built for a generation only once every hook up to its phase has succeeded.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import threading
import weakref
from collections.abc import Iterator

import anyio

from ..device import Device
from ..errors import RestoreWatcherRunningError
from ..timeouts import Deadline
from .hook import RestoreHook
from .passes import PassOutcome, RestoreProgress
from .phases import HookError
from .runner import run_inline
from .state import GateState, HookSource, Step

__all__ = ["RESTORE_WAIT_SECONDS", "HookSource", "RestoreGate"]

#: How long a thread other than the watcher's waits for the hooks before RestorePendingError.
RESTORE_WAIT_SECONDS = 30.0

# The gate whose hooks this context is running: a value that a hook touches is built at once
# (a hook may rely on the ones before it; the next pass invalidates the value anyway).
_running_hooks: contextvars.ContextVar[RestoreGate | None] = contextvars.ContextVar(
    "sysgenid_async_running_hooks", default=None
)


class RestoreGate(GateState):
    """One hook registry's restore state, its one turn, and its waiters (see the module docstring)."""

    def __init__(self, hooks: HookSource) -> None:
        super().__init__(hooks)
        self._changes = 0  # counts every wake-up: a waiter in a worker thread sleeps while it stays
        self._events: dict[int, anyio.Event] = {}  # tasks on the watcher's thread, by generation
        _gates.add(self)

    # -- the watcher --------------------------------------------------------------------

    def attach(self, watcher: object, device: Device) -> None:
        """A restore watcher starts serving this registry; a second one is refused."""
        with self._cond:
            if self._watcher is not None:
                raise RestoreWatcherRunningError(
                    f"a restore watcher already serves this hook registry ({self._watcher!r}); "
                    "each would run every hook: use the running one (one per registry)"
                )
            self._watcher = watcher
            self._watcher_thread = threading.get_ident()
            self._watcher_device = device
            if self.restored_generation is None and self._progress is None:
                self.restored_generation = device.generation  # nothing to restore from: the process starts here
            self._wake()

    def detach(self, watcher: object) -> None:
        with self._cond:
            if self._watcher is watcher:
                self._watcher = self._watcher_thread = self._watcher_device = None
            self._wake()

    @property
    def watcher(self) -> object | None:
        """The restore watcher serving this registry, if one runs."""
        return self._watcher

    def needs_restore(self, generation: int) -> bool:
        """Whether the restore hooks have yet to succeed for ``generation``."""
        with self._cond:
            return not self._ready(generation, math.inf)

    def _wake(self, generation: int | None = None) -> None:
        """Wake the waiters: every thread, and the tasks waiting for ``generation`` (None: all)."""
        self._changes += 1
        self._cond.notify_all()
        if self._events:
            if generation is None:
                events = list(self._events.values())
                self._events.clear()
            else:
                event = self._events.pop(generation, None)
                events = [] if event is None else [event]
            for event in events:
                event.set()

    # -- the turn: what a runner (runner.py) does ------------------------------------------

    async def take_turn(self, runner: object) -> None:
        """Wait until no pass runs, then hold the turn as ``runner`` (the watcher)."""
        while True:
            with self._cond:
                if self._turn is None:
                    self._turn = runner
                    return
                changes = self._changes
            # A caller's thread is running sync hooks (it began before the watcher attached).
            from anyio import to_thread

            await to_thread.run_sync(self._wait_for_change_of_state, changes, None, abandon_on_cancel=True)

    def give_turn_back(self) -> None:
        with self._cond:
            self._turn = None
            self._wake()

    def begin(self, generation: int) -> RestoreProgress | None:
        """For the holder of the turn: the progress its pass for ``generation`` continues (new for
        a new generation, every value built behind the gate invalidated); None when the hooks
        have already succeeded for it."""
        with self._cond:
            return None if self.restored_generation == generation else self._begin(generation)

    def record(self, progress: RestoreProgress, hook: RestoreHook, error: HookError | None) -> None:
        """For the holder of the turn: ``hook`` of ``progress`` has ended."""
        with self._lock:
            progress.record(hook, error)
            # What a waiter asks (``require``: every hook through a priority has succeeded; or
            # has the pass failed; is the generation restored) changes only when a phase ends:
            # settle and wake then, not per hook.
            if progress.phase_ended():
                self._settle(progress)
                self._wake(progress.generation)

    def outcome(self, progress: RestoreProgress, still_current: bool) -> tuple[PassOutcome, list[HookError]]:
        """How the pass over ``progress`` ended; ``still_current``: the device is still at its generation."""
        with self._cond:
            if self.restored_generation == progress.generation:
                return PassOutcome.SUCCEEDED, []
            if progress.failed and still_current:
                return PassOutcome.FAILED, list(progress.errors)
            return PassOutcome.SUPERSEDED, []

    def registry(self) -> HookSource | None:
        """The registry whose hooks this gate runs (None once it has gone)."""
        return self._hooks()

    @contextlib.contextmanager
    def running_hooks(self) -> Iterator[None]:
        """Mark this context as running this gate's hooks: values a hook touches are built at once."""
        token = _running_hooks.set(self)
        try:
            yield
        finally:
            _running_hooks.reset(token)

    # -- what values and requests ask ----------------------------------------------------

    def require(self, generation: int, priority: float = math.inf) -> None:
        """Return once every hook up to ``priority`` has succeeded for ``generation``, or the
        device has left it (the caller looks again).

        Without a watcher, the sync hooks run here (a failed pass is retried once per call). With
        one, a thread other than the watcher's waits (up to :data:`RESTORE_WAIT_SECONDS`); the
        watcher's own thread cannot wait for it, and a failed pass will not succeed before its
        retry: :class:`~sysgenid_async.restore.RestorePendingError` says so.
        """
        if _running_hooks.get() is self:
            return
        wait = Deadline(RESTORE_WAIT_SECONDS)
        retried = False
        while True:
            with self._cond:
                step = self._step(generation, priority, sync=True, retried=retried)
                if step is Step.WAIT:
                    if wait.expired():
                        raise self._timed_out(generation, RESTORE_WAIT_SECONDS)
                    self._cond.wait(wait.remaining())
                    continue
            if step is Step.READY:
                return
            retried = retried or step is Step.RETRY
            run_inline(self, generation)

    async def wait_restored(self, generation: int, priority: float = math.inf, timeout: float | None = None) -> None:
        """The async :meth:`require`: wait for the watcher's pass (on its thread, on an event;
        elsewhere, in a worker thread), up to ``timeout`` seconds (None: no limit). Without a
        watcher, the sync hooks run here; an async or timed one needs a watcher."""
        if _running_hooks.get() is self:
            return
        wait = Deadline(timeout)
        retried = False
        while True:
            event: anyio.Event | None = None
            with self._cond:
                step = self._step(generation, priority, sync=False, retried=retried)
                if step is Step.WAIT:
                    if wait.expired():
                        raise self._timed_out(generation, timeout)
                    changes = self._changes
                    on_watcher_loop = self._watcher_thread == threading.get_ident()
                    if on_watcher_loop and self._turn in (None, self._watcher):
                        event = self._events.get(generation)
                        if event is None:
                            event = self._events[generation] = anyio.Event()
            if step is Step.READY:
                return
            if step is not Step.WAIT:
                retried = retried or step is Step.RETRY
                run_inline(self, generation)
                continue
            left = wait.remaining()
            if event is not None:
                with anyio.move_on_after(math.inf if left is None else left):
                    await event.wait()
            else:
                from anyio import to_thread

                await to_thread.run_sync(self._wait_for_change_of_state, changes, left, abandon_on_cancel=True)

    def _wait_for_change_of_state(self, changes: int, timeout: float | None) -> None:
        """In a thread: return once the state has changed since ``changes`` was read (or after ``timeout``)."""
        wait = Deadline(timeout)
        with self._cond:
            while self._changes == changes and not wait.expired():
                self._cond.wait(wait.remaining())

    # -- process life -------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the progress, the turn, the watcher and the baseline (tests, and a child after fork)."""
        self._lock = threading.RLock()  # another thread of the parent may have held it
        self._cond = threading.Condition(self._lock)
        self.restored_generation = None
        self._progress = None
        self._turn = None
        self._events = {}
        self._watcher = self._watcher_thread = self._watcher_device = None


_gates: weakref.WeakSet[RestoreGate] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The parent's watcher does not run here.
    for gate in list(_gates):
        restored = gate.restored_generation
        gate.reset()
        gate.restored_generation = restored  # the child holds what the parent had built for this generation


os.register_at_fork(after_in_child=_after_fork_in_child)
