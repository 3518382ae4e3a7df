"""The restore gate: nothing is built for a generation before its restore hooks have run.

Every :class:`~sysgenid_async.restore.RestoreHooks` registry has one gate. For each new generation
the gate keeps one *run*: a pass over the registry's hooks in run order, shared by
whoever needs it first. The restore watcher drives it; so does a generation-bound value
touched first (sync hooks, run inline in the caller's thread), and ``await restored()``.
A hook is claimed before it runs, so it runs once per pass, and never while an earlier
hook is unfinished. A value asks the gate before it is built: it is built only once every
hook up to its phase has succeeded for the generation it is built for.

A pass runs the hooks in order; when one fails, the rest of its phase still runs (their
errors are gathered), and the pass stops there: no later phase runs on a failed one. A
retry starts again at the first hook of the failed phase.

The gate also hands bound values the probe they read when given none (:meth:`RestoreGate.probe`):
the file of the restore watcher serving this registry, which the watcher hands over when it
attaches and takes back when it detaches; without a watcher, the process probe: a
probe-only file on v8; on v4, where every open file is a watcher, no file is kept (each
check opens, reads and closes), so an idle process never holds an orchestrator back.
"""

from __future__ import annotations

import contextvars
import math
import os
import threading
import weakref
from typing import TYPE_CHECKING, Protocol

import anyio

from ..device import Device, resolve_device_path
from ..errors import RestorePendingError, RestoreWatcherRunningError
from ..timeouts import Deadline, validate_timeout
from ..uapi import Abi

if TYPE_CHECKING:
    from .hooks import HookError, RestoreHook, RestoreHooks

__all__ = ["RESTORE_WAIT_SECONDS", "RestoreGate", "restored"]

#: How long a thread other than the watcher's waits for the hooks before RestorePendingError.
RESTORE_WAIT_SECONDS = 30.0
# How often a task waiting on a run that another runner holds looks again (only during a restore).
_POLL_SECONDS = 0.005

# (gate, generation) while a runner executes that gate's hooks: values built by a hook are
# built at once, since a hook may rely on the ones before it.
_running_hooks: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "sysgenid_async_running_hooks", default=None
)


class HookRun:
    """One generation's passes over the hooks, in run order."""

    __slots__ = ("busy", "errors", "generation", "hooks", "index", "ok", "stop_priority")

    def __init__(self, generation: int, hooks: list[RestoreHook]) -> None:
        self.generation = generation
        self.hooks = hooks
        self.index = 0  # the next hook of the current pass
        self.ok = 0  # hooks[:ok] have succeeded in order: what values may rely on
        self.busy = False  # a runner is inside hooks[index]
        self.errors: list[HookError] = []  # the current pass's failures
        self.stop_priority: int | None = None  # set by a failure: the pass ends after that phase

    @property
    def finished(self) -> bool:
        """The current pass has ended (every hook ran, or a phase failed)."""
        if self.busy:
            return False
        if self.index >= len(self.hooks):
            return True
        return self.stop_priority is not None and self.hooks[self.index].priority > self.stop_priority

    @property
    def succeeded(self) -> bool:
        return self.ok >= len(self.hooks)

    def ready_through(self, priority: float) -> bool:
        """Whether every hook with a priority up to ``priority`` has succeeded."""
        return self.succeeded or self.hooks[self.ok].priority > priority

    @property
    def next_hook(self) -> RestoreHook | None:
        return None if self.finished or self.busy else self.hooks[self.index]

    def claim(self) -> RestoreHook | None:
        hook = self.next_hook
        if hook is not None:
            self.busy = True
        return hook

    def release(self, hook: RestoreHook, error: HookError | None) -> None:
        """``hook`` (the claimed one) ended: succeeded (``error`` None) or failed."""
        self.busy = False
        if error is None:
            if self.ok == self.index:
                self.ok += 1
        else:
            self.errors.append(error)
            if self.stop_priority is None:
                self.stop_priority = hook.priority
        self.index += 1

    def abandon(self) -> None:
        """The claimed hook was interrupted (a cancel): the next runner runs it again."""
        self.busy = False

    def retry(self) -> None:
        """Start a new pass at the first hook of the phase that failed."""
        if self.stop_priority is None:
            return
        start = next(i for i, hook in enumerate(self.hooks) if hook.priority >= self.stop_priority)
        self.index = self.ok = start
        self.errors = []
        self.stop_priority = None


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


class RestoreGate:
    """The restore state of one hook registry: which generation it has been restored for."""

    def __init__(self, hooks: RestoreHooks) -> None:
        self._hooks = weakref.ref(hooks)
        self._cond = threading.Condition()
        #: The generation whose hooks have all succeeded (None until the gate is first used).
        self.ready: int | None = None
        self._run: HookRun | None = None
        self._watcher: object | None = None
        self._watcher_thread: int | None = None
        self._watcher_device: Device | None = None
        # Bound values built behind this gate: each new run invalidates them (see _run_for).
        self._bound_values: weakref.WeakSet[_Invalidatable] = weakref.WeakSet()
        _gates.add(self)

    def track(self, value: _Invalidatable) -> None:
        """A bound value was built behind this gate: a new run must invalidate it."""
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
            if self.ready is None and self._run is None:
                self.ready = device.generation  # nothing to restore from: the process starts here

    def detach(self, watcher: object) -> None:
        with self._cond:
            if self._watcher is watcher:
                self._watcher = self._watcher_thread = self._watcher_device = None
            self._cond.notify_all()

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

    # -- runs ---------------------------------------------------------------------------

    def pending_run(self, generation: int) -> HookRun | None:
        """The run that restores ``generation``, or None if it needs none (already restored)."""
        with self._cond:
            return self._run_for(generation)

    def _run_for(self, generation: int) -> HookRun | None:
        if self.ready == generation:
            return None
        if self.ready is None:
            self.ready = generation  # first use: the process has nothing to restore from
            return None
        run = self._run
        if run is None or run.generation != generation:
            # A generation the values may have been built for already: a driver whose counter
            # comes back (Amazon Linux's stops at 2**31 - 1) can show 5, 2147483647, then 5
            # again. Comparing generations would keep the value built before the restore.
            for value in list(self._bound_values):
                value.invalidate()
            hooks = self._hooks()
            run = self._run = HookRun(generation, [] if hooks is None else hooks.hooks)
            if not run.hooks:
                self._succeed(run)
                return None
        return run

    def _succeed(self, run: HookRun) -> None:
        if self._run is run:  # not a run that a newer generation replaced
            self.ready = run.generation
            self._run = None
        self._cond.notify_all()

    def retry(self, run: HookRun) -> None:
        with self._cond:
            run.retry()
            self._cond.notify_all()

    async def drive(self, run: HookRun) -> bool:
        """Run ``run``'s current pass to its end from async code; True if every hook succeeded.

        Sync and async hooks alike. A hook that another runner holds is waited for.
        """
        token = _running_hooks.set((id(self), run.generation))
        try:
            while True:
                with self._cond:
                    if run.finished:
                        if run.succeeded:
                            self._succeed(run)
                        return run.succeeded
                    hook = run.claim()
                if hook is None:  # another runner is inside a hook (a first touch, in a thread)
                    await anyio.sleep(_POLL_SECONDS)
                    continue
                try:
                    error = await hook.attempt(run.generation)
                except BaseException:
                    with self._cond:
                        run.abandon()
                        self._cond.notify_all()
                    raise
                with self._cond:
                    run.release(hook, error)
                    self._cond.notify_all()
        finally:
            _running_hooks.reset(token)

    def _drive_inline(self, run: HookRun, priority: float) -> RestoreHook | None:
        """Run sync hooks of ``run`` in this thread while they are next and needed.

        Returns the hook that blocks further progress (async, timed, held by another
        runner, or failed), or None once the run is ready through ``priority``.
        """
        token = _running_hooks.set((id(self), run.generation))
        try:
            while True:
                with self._cond:
                    if run.ready_through(priority):
                        if run.succeeded:
                            self._succeed(run)
                        return None
                    hook = run.next_hook
                    if hook is None or not hook.runs_inline:
                        return run.hooks[run.ok if run.finished else run.index]
                    run.claim()
                error = hook.attempt_inline(run.generation)
                with self._cond:
                    run.release(hook, error)
                    if run.finished and run.succeeded:
                        self._succeed(run)
                    self._cond.notify_all()
        finally:
            _running_hooks.reset(token)

    # -- what values ask ----------------------------------------------------------------

    def require(self, generation: int, priority: float = math.inf) -> None:
        """Return once every hook up to ``priority`` has succeeded for ``generation``.

        Sync hooks run here if they are next. Otherwise a thread other than the watcher's
        waits (up to :data:`RESTORE_WAIT_SECONDS`); the watcher's own thread cannot wait
        for it, and a failed pass will not succeed before its retry:
        :class:`~sysgenid_async.restore.RestorePendingError` says so.
        """
        if _running_hooks.get() == (id(self), generation):
            return
        wait = Deadline(RESTORE_WAIT_SECONDS)
        retried = False
        while True:
            with self._cond:
                run = self._run_for(generation)
                if run is None or run.ready_through(priority):
                    return
            blocker = self._drive_inline(run, priority)
            if blocker is None:
                return
            with self._cond:
                if run.finished and not run.succeeded:
                    if self._watcher is None and not retried:
                        # Nobody else will retry: this caller does, once per call.
                        retried = True
                        run.retry()
                        continue
                    raise self._pending(run, blocker, "its restore hooks failed and wait for a retry")
                can_wait = self._watcher is not None and self._watcher_thread != threading.get_ident()
                if not can_wait:
                    reason = (
                        "a restore hook that only the restore watcher can run has not run yet"
                        if self._watcher is not None
                        else "a restore hook that needs a running restore watcher (async or timed) has not run"
                    )
                    raise self._pending(run, blocker, reason)
                if wait.expired():
                    raise self._pending(run, blocker, f"the restore hooks did not finish in {RESTORE_WAIT_SECONDS} s")
                self._cond.wait(wait.next_slice())

    async def restored(self, generation: int, priority: float = math.inf, timeout: float | None = None) -> None:
        """The async :meth:`require`: run what is next, wait for the rest (up to ``timeout``)."""
        if _running_hooks.get() == (id(self), generation):
            return
        wait = Deadline(timeout)
        retried = False
        while True:
            run = self.pending_run(generation)
            if run is None or run.ready_through(priority):
                return
            with self._cond:
                if run.finished and not run.succeeded and self._watcher is None and not retried:
                    retried = True  # nobody else will retry: this caller does, once per call
                    run.retry()
                runnable = not run.finished and not run.busy
            if runnable:
                await self.drive(run)
                continue
            if wait.expired():
                blocker = run.hooks[min(run.ok, len(run.hooks) - 1)]
                raise self._pending(run, blocker, f"the restore hooks did not finish in {timeout} s")
            await anyio.sleep(_POLL_SECONDS)

    def _pending(self, run: HookRun, blocker: RestoreHook, reason: str) -> RestorePendingError:
        error = RestorePendingError(
            run.generation, f"{reason} (waiting for {blocker.name}); await restored() before building values",
            blocker.name,
        )
        if run.errors:
            error.__cause__ = run.errors[0]
        return error

    # -- process life -------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every run and the baseline (tests, and a child after fork)."""
        self._cond = threading.Condition()
        self.ready = None
        self._run = None
        self._watcher = self._watcher_thread = self._watcher_device = None


_gates: weakref.WeakSet[RestoreGate] = weakref.WeakSet()


async def restored(
    *, phase: float | None = None, timeout: float | None = RESTORE_WAIT_SECONDS, hooks: RestoreHooks | None = None
) -> int:
    """Wait until this process has run its restore hooks for the current generation; return it.

    For request handlers and readiness gates: after it returns, nothing built from the
    library carries state from before the restore. Runs the hooks itself if nothing has
    yet (a request that arrives before the restore watcher's task). ``phase``: only the
    hooks up to that phase. Raises :class:`~sysgenid_async.restore.RestorePendingError` when they
    have not all succeeded within ``timeout`` seconds (None: no limit).
    """
    from .hooks import restore_hooks

    seconds = validate_timeout(timeout)
    gate = (restore_hooks if hooks is None else hooks).gate
    generation = gate.probe().generation
    await gate.restored(generation, math.inf if phase is None else phase, seconds)
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
        ready = gate.ready
        gate.reset()
        gate.ready = ready  # the child holds what the parent had built for this generation


os.register_at_fork(after_in_child=_after_fork_in_child)
