"""The restore gate: one runner of a registry's hooks, and the line that requests wait behind.

Every :class:`~sysgenid_async.restore.RestoreHooks` registry has one gate (``hooks.gate``).

Who runs the hooks:

- with a restore watcher attached, its task alone, for every kind of pass (restore,
  before-snapshot, resume), one pass at a time under the gate's one turn;
- with no watcher, the caller that needs them (a bound value, ``await restored()``), in its
  own thread, sync hooks only, holding the same turn; a second caller waits for it.

Shared state, all under one condition's lock:

- ``restored_generation``, the progress of the current restore (how many hooks in order have
  succeeded, the last pass's failures), the turn: changed by the holder of the turn only;
- the attached watcher: changed by ``attach``/``detach`` (the watcher's own thread);
- the waiters: threads wait on the condition, tasks on the watcher's thread on an
  ``anyio.Event`` per generation, other tasks in a worker thread on the condition. Every
  change of state wakes them; nobody polls.

What a hook and a value may rely on:

- a hook never runs concurrently with itself, nor with any other hook of its registry;
- a newer generation supersedes a running pass: it stops at its next checkpoint (between two
  hooks; inside an async hook at an await; a sync hook in a worker thread is waited for),
  and the newer pass starts once it has exited;
- a pass for a new generation invalidates every value built behind the gate;
- a value is built for a generation only once every hook up to its phase has succeeded for
  that generation; a caller that finds the device moved on looks again.
"""

from __future__ import annotations

import contextvars
import enum
import math
import os
import threading
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import anyio

from ..device import Device, resolve_device_path
from ..errors import RestorePendingError, RestoreWatcherRunningError
from ..timeouts import Deadline
from ..uapi import Abi

if TYPE_CHECKING:
    from .hooks import HookError, HookKind, RestoreHook, RestoreHooks

__all__ = [
    "RESTORE_WAIT_SECONDS",
    "LifecyclePass",
    "PassOutcome",
    "RestoreGate",
    "RestoreProgress",
    "cancelled_when",
    "restored",
    "run_restore_pass",
]

#: How long a thread other than the watcher's waits for the hooks before RestorePendingError.
RESTORE_WAIT_SECONDS = 30.0

# The gate whose hooks this context is running: a value that a hook touches is built at once
# (a hook may rely on the ones before it; the next pass invalidates the value anyway).
_running_hooks: contextvars.ContextVar[RestoreGate | None] = contextvars.ContextVar(
    "sysgenid_async_running_hooks", default=None
)


class RestoreProgress:
    """How far the restore of one generation has got, pass after pass."""

    __slots__ = ("errors", "failed_phase", "generation", "hooks", "index", "ok")

    def __init__(self, generation: int, hooks: list[RestoreHook]) -> None:
        self.generation = generation
        self.hooks = hooks
        self.ok = 0  # hooks[:ok] have succeeded, in order: what values may rely on
        self.index = 0  # the next hook of the current pass
        self.failed_phase: int | None = None  # set by a failure: the pass ends after this phase
        self.errors: list[HookError] = []  # the current pass's failures

    @property
    def succeeded(self) -> bool:
        return self.ok >= len(self.hooks)

    @property
    def failed(self) -> bool:
        """The current pass has ended on a failure (the rest of the failed phase has run)."""
        return self.failed_phase is not None and self.next_hook() is None

    def ready_through(self, priority: float) -> bool:
        """Whether every hook with a priority up to ``priority`` has succeeded."""
        return self.succeeded or self.hooks[self.ok].priority > priority

    def next_hook(self) -> RestoreHook | None:
        """The hook the current pass runs next; None once the pass is over."""
        if self.index >= len(self.hooks):
            return None
        hook = self.hooks[self.index]
        if self.failed_phase is not None and hook.priority > self.failed_phase:
            return None
        return hook

    def record(self, hook: RestoreHook, error: HookError | None) -> None:
        """``hook``, the pass's next one, has ended: succeeded (``error`` None) or failed."""
        if error is None:
            if self.ok == self.index:
                self.ok += 1
        else:
            self.errors.append(error)
            if self.failed_phase is None:
                self.failed_phase = hook.priority
        self.index += 1

    def start_pass(self) -> None:
        """The next pass goes on where this one stopped; after a failure, at the failed phase's first hook."""
        if self.failed_phase is None:
            return
        phase = self.hooks[self.ok].priority
        self.index = self.ok = next(i for i, hook in enumerate(self.hooks) if hook.priority >= phase)
        self.failed_phase = None
        self.errors = []


class PassOutcome(enum.Enum):
    """How a restore pass that the watcher ran ended."""

    #: every hook has succeeded for the generation
    SUCCEEDED = "succeeded"
    #: a phase failed; the pass stopped after it (the errors are the progress's)
    FAILED = "failed"
    #: the device left the generation: a newer pass runs next
    SUPERSEDED = "superseded"


@dataclass
class LifecyclePass:
    """What a before-snapshot or resume pass did."""

    #: the hooks that failed, timed out included
    errors: list[HookError] = field(default_factory=list)
    #: the hooks the pass's budget left unrun, in order
    not_run: list[RestoreHook] = field(default_factory=list)
    #: a restore came meanwhile: the pass was cancelled at its next checkpoint
    superseded: bool = False


class GenerationProbe(Protocol):
    """Anything with a cheap ``generation`` (a handle on the device, a RestoreWatcher)."""

    @property
    def generation(self) -> int: ...


class _ShortLivedProbe:
    """The generation through a file opened and closed per read: no watcher left open (v4)."""

    __slots__ = ()

    @property
    def generation(self) -> int:
        return read_generation()


_SHORT_LIVED = _ShortLivedProbe()


class _Invalidatable(Protocol):
    def invalidate(self) -> None: ...


class _Step(enum.Enum):
    """What a caller that needs the hooks does next."""

    READY = "ready"  # built for the generation, or the device moved on: look again
    RUN = "run"  # no watcher, the turn is this caller's: run the sync hooks now
    RETRY = "retry"  # the same, for a pass that failed (once per call)
    WAIT = "wait"  # the runner is at work, or about to be


#: How a runner waits for the device to leave a generation (returns once it has).
MovedOn = Callable[[], Awaitable[object]]


class RestoreGate:
    """The restore state of one hook registry, and its one runner (see the module docstring)."""

    def __init__(self, hooks: RestoreHooks) -> None:
        self._hooks = weakref.ref(hooks)
        self._cond = threading.Condition()
        #: The generation whose restore hooks have all succeeded (None until the gate is first used).
        self.restored_generation: int | None = None
        self._progress: RestoreProgress | None = None
        self._turn: object | None = None  # who runs a pass now: the watcher, or a caller's thread id
        self._changes = 0  # counts every wake-up: a waiter in a worker thread sleeps while it stays
        self._events: dict[int, anyio.Event] = {}  # tasks on the watcher's thread, by generation
        self._watcher: object | None = None
        self._watcher_thread: int | None = None
        self._watcher_device: Device | None = None
        # Bound values built behind this gate: each new restore invalidates them (see _begin).
        self._bound_values: weakref.WeakSet[_Invalidatable] = weakref.WeakSet()
        _gates.add(self)

    def track(self, value: _Invalidatable) -> None:
        """A bound value was built behind this gate: a new restore must invalidate it."""
        self._bound_values.add(value)

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

    def probe(self) -> GenerationProbe:
        """What values behind this gate read the generation from, when given no probe: the
        file of the restore watcher serving this registry, else the process probe (on v4, a
        file opened and closed per read)."""
        device = self._watcher_device or process_probe()
        return _SHORT_LIVED if device is None else device

    def needs_restore(self, generation: int) -> bool:
        """Whether the restore hooks have yet to succeed for ``generation``."""
        with self._cond:
            return not self._ready(generation, math.inf)

    # -- the state, under the lock --------------------------------------------------------

    def _ready(self, generation: int, priority: float) -> bool:
        if self.restored_generation == generation:
            return True
        if self.restored_generation is None and self._progress is None:
            self.restored_generation = generation  # first use: the process has nothing to restore from
            return True
        progress = self._progress
        if progress is not None and progress.generation == generation:
            return progress.ready_through(priority)
        hooks = self._hooks()
        registered = [] if hooks is None else hooks.hooks
        return not registered or registered[0].priority > priority  # no hook it waits for

    def _moved_on(self, generation: int) -> bool:
        return self.probe().generation != generation

    def _begin(self, generation: int) -> RestoreProgress:
        """The progress that the turn's pass for ``generation`` continues: new for a new
        generation (every value built behind the gate invalidated), else the same one."""
        progress = self._progress
        if progress is None or progress.generation != generation:
            # A generation the values may have been built for already: a counter can come back
            # (a forced minimum moves it anywhere). Comparing generations would keep the old value.
            for value in list(self._bound_values):
                value.invalidate()
            hooks = self._hooks()
            progress = self._progress = RestoreProgress(generation, [] if hooks is None else hooks.hooks)
        else:
            progress.start_pass()
        self._settle(progress)
        return progress

    def _settle(self, progress: RestoreProgress) -> None:
        if progress.succeeded and self._progress is progress:
            self.restored_generation = progress.generation
            self._progress = None

    def _record(self, progress: RestoreProgress, hook: RestoreHook, error: HookError | None) -> None:
        with self._cond:
            progress.record(hook, error)
            self._settle(progress)
            self._wake(progress.generation)

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

    def _give_turn_back(self) -> None:
        with self._cond:
            self._turn = None
            self._wake()

    # -- the runner: the watcher's task ---------------------------------------------------

    async def _take_turn(self, runner: object) -> None:
        while True:
            with self._cond:
                if self._turn is None:
                    self._turn = runner
                    return
                changes = self._changes
            # A caller's thread is running sync hooks (it began before the watcher attached).
            from anyio import to_thread

            await to_thread.run_sync(self._wait_for_change_of_state, changes, None, abandon_on_cancel=True)

    async def run_restore(
        self, runner: object, generation: int, moved_on: MovedOn
    ) -> tuple[PassOutcome, list[HookError]]:
        """Run a restore pass for ``generation`` as ``runner`` (the watcher), from where the last
        one stopped (a failed phase again); how it ended, and its failures. ``moved_on``
        returns once the device has left ``generation``: the pass is cancelled then."""
        await self._take_turn(runner)
        try:
            with self._cond:
                if self.restored_generation == generation:
                    return PassOutcome.SUCCEEDED, []
                progress = self._begin(generation)
            probe = self.probe()
            body = self._run_pass(progress, lambda: probe.generation == generation)
            if any(not hook.runs_inline for hook in progress.hooks[progress.index:]):
                await cancelled_when(moved_on, body)
            else:
                await body  # no await inside: each hook looks at the page before it runs
            with self._cond:
                if self.restored_generation == generation:
                    return PassOutcome.SUCCEEDED, []
                if progress.failed and probe.generation == generation:
                    return PassOutcome.FAILED, list(progress.errors)
                return PassOutcome.SUPERSEDED, []
        finally:
            self._give_turn_back()

    async def _run_pass(self, progress: RestoreProgress, current: Callable[[], bool]) -> None:
        token = _running_hooks.set(self)
        try:
            await run_restore_pass(progress, current, lambda hook, error: self._record(progress, hook, error))
        finally:
            _running_hooks.reset(token)

    async def run_lifecycle(
        self, runner: object, kind: HookKind, generation: int, budget: float | None, moved_on: MovedOn
    ) -> LifecyclePass:
        """Run every hook of ``kind`` once as ``runner`` (the watcher), within ``budget`` seconds;
        a restore meanwhile (``moved_on`` returns) cancels the pass."""
        hooks = self._hooks()
        if hooks is None:
            return LifecyclePass()
        await self._take_turn(runner)
        try:
            result = LifecyclePass()
            token = _running_hooks.set(self)
            try:
                await cancelled_when(moved_on, hooks.run_lifecycle_into(result, kind, generation, budget))
            finally:
                _running_hooks.reset(token)
            result.superseded = self.probe().generation != generation
            return result
        finally:
            self._give_turn_back()

    # -- the runner without a watcher: the caller's thread, sync hooks only -------------------

    def _run_inline(self, generation: int) -> None:
        """Run the sync hooks of a pass in this thread, holding the turn (taken by _step)."""
        try:
            with self._cond:
                progress = self._begin(generation)
            probe = self.probe()
            # Look at the page between hooks; a probe that opens a file per read (v4) is not worth it.
            mapped = isinstance(probe, Device)
            current: Callable[[], bool] = lambda: not mapped or probe.generation == generation  # noqa: E731
            token = _running_hooks.set(self)
            try:
                while (hook := progress.next_hook()) is not None and hook.runs_inline and current():
                    self._record(progress, hook, hook.attempt_inline(generation))
            finally:
                _running_hooks.reset(token)
        finally:
            self._give_turn_back()

    # -- what values and requests ask ----------------------------------------------------

    def _step(self, generation: int, priority: float, *, sync: bool, retried: bool) -> _Step:
        """Under the lock: what a caller that needs ``generation`` through ``priority`` does next."""
        if self._ready(generation, priority) or self._moved_on(generation):
            return _Step.READY
        progress = self._progress
        if progress is not None and progress.generation != generation:
            progress = None
        failed = progress is not None and progress.failed
        if self._watcher is not None:
            if sync and self._watcher_thread == threading.get_ident():
                raise self._pending(generation, "a restore hook that only the restore watcher can run has not run yet")
            if sync and failed and self._turn is None:
                raise self._pending(generation, "its restore hooks failed and wait for a retry")
            return _Step.WAIT
        if self._turn is not None:
            return _Step.WAIT  # another caller's thread is running the sync hooks
        if failed and retried:
            raise self._pending(generation, "its restore hooks failed and wait for a retry")
        if progress is not None and not failed:
            hook = progress.next_hook()
            if hook is not None and not hook.runs_inline:
                raise self._pending(
                    generation, "a restore hook that needs a running restore watcher (async or timed) has not run"
                )
        self._turn = threading.get_ident()
        return _Step.RETRY if failed else _Step.RUN

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
                if step is _Step.WAIT:
                    if wait.expired():
                        raise self._timed_out(generation, RESTORE_WAIT_SECONDS)
                    self._cond.wait(wait.remaining())
                    continue
            if step is _Step.READY:
                return
            retried = retried or step is _Step.RETRY
            self._run_inline(generation)

    async def restored(self, generation: int, priority: float = math.inf, timeout: float | None = None) -> None:
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
                if step is _Step.WAIT:
                    if wait.expired():
                        raise self._timed_out(generation, timeout)
                    changes = self._changes
                    on_watcher_loop = self._watcher_thread == threading.get_ident()
                    if on_watcher_loop and self._turn in (None, self._watcher):
                        event = self._events.get(generation)
                        if event is None:
                            event = self._events[generation] = anyio.Event()
            if step is _Step.READY:
                return
            if step is not _Step.WAIT:
                retried = retried or step is _Step.RETRY
                self._run_inline(generation)
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

    def _timed_out(self, generation: int, seconds: float | None) -> RestorePendingError:
        return self._pending(generation, f"the restore hooks did not finish in {seconds or 0:g} s")

    def _pending(self, generation: int, reason: str) -> RestorePendingError:
        """The typed refusal, naming the hook that holds ``generation`` back (under the lock)."""
        progress = self._progress
        if progress is not None and progress.generation == generation and not progress.succeeded:
            blocker = progress.hooks[progress.ok].name
            errors = progress.errors
        else:
            hooks = self._hooks()
            registered = [] if hooks is None else hooks.hooks
            blocker = registered[0].name if registered else "?"
            errors = []
        error = RestorePendingError(
            generation, f"{reason} (waiting for {blocker}); await restored() before building values", blocker
        )
        if errors:
            error.__cause__ = errors[0]
        return error

    # -- process life -------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the progress, the turn, the watcher and the baseline (tests, and a child after fork)."""
        self._cond = threading.Condition()
        self.restored_generation = None
        self._progress = None
        self._turn = None
        self._events = {}
        self._watcher = self._watcher_thread = self._watcher_device = None


async def run_restore_pass(
    progress: RestoreProgress,
    current: Callable[[], bool] = lambda: True,
    record: Callable[[RestoreHook, HookError | None], None] | None = None,
) -> None:
    """Run one pass of ``progress``'s hooks in order, while ``current()`` (the generation is
    still the device's); ``record`` (default: the progress's own) notes each hook's end.

    A failure lets the rest of its phase run, and ends the pass after it. A cancellation
    propagates at once; the hook it interrupted has not ended.
    """
    note = progress.record if record is None else record
    while (hook := progress.next_hook()) is not None and current():
        generation = progress.generation
        note(hook, hook.attempt_inline(generation) if hook.runs_inline else await hook.attempt(generation))


async def cancelled_when(moved_on: MovedOn, body: Awaitable[None]) -> None:
    """Run ``body``, cancelled at its next checkpoint once ``moved_on`` returns."""
    async with anyio.create_task_group() as tasks:

        async def supervise() -> None:
            await moved_on()
            tasks.cancel_scope.cancel()

        tasks.start_soon(supervise)
        await body
        tasks.cancel_scope.cancel()


_gates: weakref.WeakSet[RestoreGate] = weakref.WeakSet()


async def restored(
    *, phase: float | None = None, timeout: float | None = RESTORE_WAIT_SECONDS, hooks: RestoreHooks | None = None
) -> int:
    """Wait until this process has run its restore hooks for the current generation; return it.

    For request handlers and readiness gates: after it returns, nothing built from the
    library carries state from before the restore. With a restore watcher, it waits for the
    watcher's pass; without one, it runs the sync hooks itself. ``phase``: only the hooks up
    to that phase. Raises :class:`~sysgenid_async.restore.RestorePendingError` when they
    have not all succeeded within ``timeout`` seconds (None: no limit).
    """
    from .hooks import restore_hooks

    wait = Deadline(timeout)
    gate = (restore_hooks if hooks is None else hooks).gate
    priority = math.inf if phase is None else phase
    while True:
        generation = gate.probe().generation
        await gate.restored(generation, priority, wait.remaining())
        if gate.probe().generation == generation:  # else a newer one came: wait for it too
            return generation


# -- the process probe ----------------------------------------------------------------------

_probe: Device | None = None
_probe_lock = threading.Lock()
# The default path whose ABI is v4: no long-lived file is kept for it.
_short_lived_path: str | None = None


def process_probe() -> Device | None:
    """A probe-only file on the default device, kept open; None where the device is v4."""
    global _probe, _short_lived_path
    probe = _probe
    if probe is not None and not probe.closed:
        return probe
    with _probe_lock:
        path = resolve_device_path()
        if _probe is not None and not _probe.closed and _probe.path == path:
            return _probe
        if _short_lived_path == path:
            return None
        device = Device.open(path, watcher=False)
        if device.abi is Abi.V4:
            # Every open file is a watcher on v4: a kept probe would stay outdated in an idle
            # process and hold orchestrators back. Read through short-lived files instead.
            device.close()
            _short_lived_path = path
            return None
        _probe = device
        return device


def read_generation(path: str | os.PathLike[str] | None = None) -> int:
    """The current generation through a file opened and closed at once (no watcher left)."""
    with Device.open(path, watcher=False) as device:
        return device.generation


def close_process_probe() -> None:
    """Close the process probe; the next use opens it again (the default path may have changed)."""
    global _probe, _short_lived_path
    with _probe_lock:
        if _probe is not None:
            _probe.close()
        _probe = None
        _short_lived_path = None


def _after_fork_in_child() -> None:
    # The parent's files were released by the device layer; its watcher does not run here.
    global _probe, _probe_lock, _short_lived_path
    _probe, _probe_lock, _short_lived_path = None, threading.Lock(), None
    for gate in list(_gates):
        restored = gate.restored_generation
        gate.reset()
        gate.restored_generation = restored  # the child holds what the parent had built for this generation


os.register_at_fork(after_in_child=_after_fork_in_child)
