"""A gate's state and its transitions, under the gate's lock: no waiting, no running here.

- ``restored_generation``: the generation whose restore hooks have all succeeded;
- ``_progress``: how far the current generation's restore has got (None when it is done);
- ``_turn``: who runs a pass now (the watcher, or a caller's thread id), None when nobody;
- ``_watcher`` and its thread and device: the restore watcher attached, if one is;
- ``_bound_values``: values built behind the gate, invalidated by a pass for a new generation.

Each is changed under ``_cond``'s lock only; the gate (gate.py) says by whom.
"""

from __future__ import annotations

import enum
import threading
import weakref
from typing import Protocol

from ..device import Device
from ..errors import RestorePendingError
from .hook import RestoreHook
from .passes import RestoreProgress
from .phases import HookKind
from .probe import SHORT_LIVED, GenerationProbe, process_probe

__all__ = ["GateState", "HookSource", "Step"]


class HookSource(Protocol):
    """What the gate runs: a registry's hooks, in run order, of each kind."""

    @property
    def hooks(self) -> list[RestoreHook]: ...

    def lifecycle_hooks(self, kind: HookKind) -> list[RestoreHook]: ...


class _Invalidatable(Protocol):
    def invalidate(self) -> None: ...


class Step(enum.Enum):
    """What a caller that needs the hooks does next."""

    READY = "ready"  # built for the generation, or the device moved on: look again
    RUN = "run"  # no watcher, the turn is this caller's: run the sync hooks now
    RETRY = "retry"  # the same, for a pass that failed (once per call)
    WAIT = "wait"  # the runner is at work, or about to be


class GateState:
    """The state of one registry's restore (see the module docstring)."""

    def __init__(self, hooks: HookSource) -> None:
        self._hooks = weakref.ref(hooks)
        # The condition's lock, held directly where no one waits (the per-hook record):
        # entering it through the condition costs a Python call more on each side.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        #: The generation whose restore hooks have all succeeded (None until the gate is first used).
        self.restored_generation: int | None = None
        self._progress: RestoreProgress | None = None
        self._turn: object | None = None
        self._watcher: object | None = None
        self._watcher_thread: int | None = None
        self._watcher_device: Device | None = None
        self._bound_values: weakref.WeakSet[_Invalidatable] = weakref.WeakSet()

    def track(self, value: _Invalidatable) -> None:
        """A bound value was built behind this gate: a new restore must invalidate it."""
        self._bound_values.add(value)

    def probe(self) -> GenerationProbe:
        """What values behind this gate read the generation from, when given no probe: the
        file of the restore watcher serving this registry, else the process probe (on v4, a
        file opened and closed per read)."""
        device = self._watcher_device or process_probe()
        return SHORT_LIVED if device is None else device

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

    def _step(self, generation: int, priority: float, *, sync: bool, retried: bool) -> Step:
        """Under the lock: what a caller that needs ``generation`` through ``priority`` does next."""
        if self._ready(generation, priority) or self._moved_on(generation):
            return Step.READY
        progress = self._progress
        if progress is not None and progress.generation != generation:
            progress = None
        failed = progress is not None and progress.failed
        if self._watcher is not None:
            if sync and self._watcher_thread == threading.get_ident():
                raise self._pending(generation, "a restore hook that only the restore watcher can run has not run yet")
            if sync and failed and self._turn is None:
                raise self._pending(generation, "its restore hooks failed and wait for a retry")
            return Step.WAIT
        if self._turn is not None:
            return Step.WAIT  # another caller's thread is running the sync hooks
        if failed and retried:
            raise self._pending(generation, "its restore hooks failed and wait for a retry")
        if progress is not None and not failed:
            hook = progress.next_hook()
            if hook is not None and not hook.runs_inline:
                raise self._pending(
                    generation, "a restore hook that needs a running restore watcher (async or timed) has not run"
                )
        self._turn = threading.get_ident()
        return Step.RETRY if failed else Step.RUN

    def _timed_out(self, generation: int, seconds: float | None) -> RestorePendingError:
        return self._pending(generation, f"the restore hooks did not finish in {seconds or 0:g} s")

    def _pending(self, generation: int, reason: str) -> RestorePendingError:
        """The typed refusal, naming the hook that holds ``generation`` back (under the lock)."""
        progress = self._progress
        if progress is not None and progress.generation == generation and not progress.succeeded:
            blocker = progress.hooks[progress.succeeded_count].name
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
