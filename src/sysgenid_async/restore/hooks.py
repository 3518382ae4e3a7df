"""The hook registry: what runs on a restore, before a snapshot and on resume, and in what order.

    from sysgenid_async.restore import Phase, on_restore

    @on_restore(phase=Phase.RESEED)
    def reseed(generation: int) -> None:
        random.seed(os.urandom(32))

    @on_restore(timeout=5)
    async def reconnect(generation: int) -> None:
        await pool.reopen()

- Restore hooks run by phase (``Phase``), or by an explicit ``priority`` (lower first); ties
  in registration order. How a pass runs and fails: passes.py; who runs it: gate.py.
- ``@on_before_snapshot(phase=...)`` hooks run in reverse phase order when ``prepare``
  asks; ``@on_resume(phase=...)`` hooks in phase order when ``resume`` does
  (docs/lifecycle.md). Every hook of those passes runs; the failures are gathered.
- ``restored()`` waits until the process's hooks have run for the current generation.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, overload

from ..timeouts import Deadline, validate_timeout
from .callbacks import callable_name, check_callable_as
from .gate import RESTORE_WAIT_SECONDS, RestoreGate
from .hook import HookFunction, RestoreHook
from .passes import LifecyclePass, RestoreProgress, run_lifecycle_pass, run_restore_pass
from .phases import HookKind, Phase, RestoreHooksError

__all__ = ["RestoreHooks", "on_before_snapshot", "on_restore", "on_resume", "restore_hooks", "restored"]

#: A hook: ``hook(generation)``, sync or async. Typed so that a checker rejects another signature.
F = TypeVar("F", bound=Callable[[int], object])


def _run_order(hook: RestoreHook) -> tuple[int, int]:
    return hook.priority, hook.sequence


class RestoreHooks:
    """A registry of restore hooks. The process-wide one is :data:`restore_hooks`."""

    def __init__(self) -> None:
        self._hooks: list[RestoreHook] = []
        # The lifecycle's other kinds, each kept in registration order (sorted when run).
        self._lifecycle: dict[HookKind, list[RestoreHook]] = {HookKind.BEFORE_SNAPSHOT: [], HookKind.RESUME: []}
        #: ``@hooks.register`` or ``@hooks.register(phase=...)``: run on each restore, in phase order.
        self.register = Registrar(self, HookKind.RESTORE)
        #: ``@hooks.before_snapshot(phase=...)``: run by ``prepare``, connections first.
        self.before_snapshot = Registrar(self, HookKind.BEFORE_SNAPSHOT)
        #: ``@hooks.on_resume(phase=...)``: run by ``resume``, in phase order.
        self.on_resume = Registrar(self, HookKind.RESUME)
        self._lock = threading.Lock()
        self._sequence = itertools.count()
        #: Which generation this registry has been restored for (see :mod:`~sysgenid_async.restore.gate`).
        self.gate = RestoreGate(self)

    def _add(self, kind: HookKind, function: F, **options: Any) -> F:
        hook = self._make_hook(function, **options)
        with self._lock:
            if kind is HookKind.RESTORE:  # kept in run order; sequence numbers only grow, so ties stay in order
                bisect.insort(self._hooks, hook, key=_run_order)
            else:
                self._lifecycle[kind].append(hook)
        return function

    def _make_hook(
        self,
        function: Callable[[int], object],
        *,
        phase: Phase,
        priority: int | None,
        timeout: float | None,
        weak: bool,
        name: str | None,
    ) -> RestoreHook:
        if not callable(function):
            raise TypeError(f"a restore hook must be callable, not {type(function).__name__}")
        if not isinstance(phase, Phase):
            raise TypeError(f"phase must be a Phase, not {type(phase).__name__}")
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
            raise TypeError(f"priority must be an int, not {type(priority).__name__}")
        seconds = validate_timeout(timeout)
        if seconds == 0:
            raise ValueError("timeout must be a positive number of seconds or None, got 0")
        import inspect  # at registration, not at import: it is slow to import

        check_callable_as(function, (0,), "a restore hook is called as hook(generation)")

        target: HookFunction | Callable[[], HookFunction | None] = function
        if weak:
            target = weakref.WeakMethod(function) if inspect.ismethod(function) else weakref.ref(function)
        return RestoreHook(
            name=name or callable_name(function),
            priority=phase.value if priority is None else priority,
            timeout=seconds,
            sequence=next(self._sequence),
            _target=target,
            weak=weak,
            is_async=inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
                getattr(function, "__call__", None)  # noqa: B004 - async callable objects
            ),
        )

    def unregister(self, function: Callable[..., Any]) -> bool:
        """Remove every registration of ``function``, of every kind; True if there was one."""
        with self._lock:
            kept = [h for h in self._hooks if h.function != function]
            removed = len(kept) != len(self._hooks)
            self._hooks = kept
            for kind, hooks in self._lifecycle.items():
                kept = [h for h in hooks if h.function != function]
                removed = removed or len(kept) != len(hooks)
                self._lifecycle[kind] = kept
        return removed

    def clear(self) -> None:
        """Remove every hook, of every kind."""
        with self._lock:
            self._hooks = []
            for hooks in self._lifecycle.values():
                hooks.clear()

    def lifecycle_hooks(self, kind: HookKind) -> list[RestoreHook]:
        """The live hooks of ``kind``, in the order they run: before-snapshot hooks in reverse
        phase order (connections first), the others in phase order; ties in registration order."""
        if kind is HookKind.RESTORE:
            return self.hooks
        with self._lock:
            hooks = [h for h in self._lifecycle[kind] if h.function is not None]
            self._lifecycle[kind] = list(hooks)
        if kind is HookKind.BEFORE_SNAPSHOT:
            return sorted(hooks, key=lambda h: (-h.priority, h.sequence))
        return sorted(hooks, key=_run_order)

    async def run_lifecycle(self, kind: HookKind, generation: int, timeout: float | None = None) -> LifecyclePass:
        """Run every hook of ``kind`` once, in order, in the caller's task; what failed and
        what the budget left unrun. A service's restore watcher runs them through its
        :attr:`gate` instead, one pass at a time."""
        result = LifecyclePass()
        await run_lifecycle_pass(result, self.lifecycle_hooks(kind), kind, generation, validate_timeout(timeout))
        return result

    def replace_hooks(self, hooks: list[RestoreHook], kind: HookKind = HookKind.RESTORE) -> list[RestoreHook]:
        """Put ``hooks`` in place of the registered ones of ``kind``; returns those (test isolation)."""
        with self._lock:
            if kind is HookKind.RESTORE:
                previous, self._hooks = self._hooks, list(hooks)
            else:
                previous, self._lifecycle[kind] = self._lifecycle[kind], list(hooks)
        return previous

    @property
    def hooks(self) -> list[RestoreHook]:
        """The live hooks, in run order (collected weak ones are dropped here)."""
        with self._lock:
            self._hooks = [h for h in self._hooks if h.function is not None]
            return list(self._hooks)

    def __len__(self) -> int:
        return len(self.hooks)

    async def run(self, generation: int) -> None:
        """Run one pass of the hooks for ``generation``, in order, in the caller's task, whatever
        the gate says (a service's restore watcher runs them through :attr:`gate`).

        When a hook fails, the rest of its phase still runs, later phases do not, and the
        failures are logged and raised together as a :class:`RestoreHooksError`. A
        cancellation of the caller is not a failure: it propagates at once. A hook that
        raises a cancellation by itself, with nothing cancelling the caller, has failed.
        """
        progress = RestoreProgress(generation, self.hooks)
        await run_restore_pass(progress)
        if progress.errors:
            raise RestoreHooksError(generation, progress.errors)


class Registrar:
    """Registers hooks of one kind on a registry (``hooks.register``, ``hooks.before_snapshot``,
    ``hooks.on_resume``): a decorator with or without arguments, typed so that a checker rejects
    a hook that is not ``hook(generation)``."""

    def __init__(self, hooks: RestoreHooks, kind: HookKind) -> None:
        self._hooks = hooks
        self.kind = kind

    @overload
    def __call__(
        self, function: F, *, phase: Phase = ..., priority: int | None = ..., timeout: float | None = ...,
        weak: bool = ..., name: str | None = ...,
    ) -> F: ...

    @overload
    def __call__(
        self, function: None = None, *, phase: Phase = ..., priority: int | None = ..., timeout: float | None = ...,
        weak: bool = ..., name: str | None = ...,
    ) -> Callable[[F], F]: ...

    def __call__(
        self,
        function: F | None = None,
        *,
        phase: Phase = Phase.DEFAULT,
        priority: int | None = None,
        timeout: float | None = None,
        weak: bool = False,
        name: str | None = None,
    ) -> F | Callable[[F], F]:
        """Register ``function(generation)``, sync or async; returns the function unchanged.

        ``priority`` places it among the phases (default: the phase's value; lower runs first,
        before-snapshot hooks run highest first). ``weak=True`` holds it by weak reference (a
        bound method through ``WeakMethod``), so the hook vanishes with its object, as CRaC's
        resources do.
        """
        options = {"phase": phase, "priority": priority, "timeout": timeout, "weak": weak, "name": name}
        if function is None:
            return lambda f: self._hooks._add(self.kind, f, **options)
        return self._hooks._add(self.kind, function, **options)


#: The process-wide registry that :class:`~sysgenid_async.restore.RestoreWatcher` runs by default.
restore_hooks = RestoreHooks()
#: Register on the process-wide registry: ``@on_restore`` or ``@on_restore(phase=...)``.
on_restore = restore_hooks.register
#: A hook that ``sysgenid-async prepare`` runs before a snapshot: ``@on_before_snapshot(phase=...)``.
on_before_snapshot = restore_hooks.before_snapshot
#: A hook that ``sysgenid-async resume`` runs when the original VM goes on: ``@on_resume(phase=...)``.
on_resume = restore_hooks.on_resume


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
    wait = Deadline(timeout)
    gate = (restore_hooks if hooks is None else hooks).gate
    priority = math.inf if phase is None else phase
    while True:
        generation = gate.probe().generation
        await gate.wait_restored(generation, priority, wait.remaining())
        if gate.probe().generation == generation:  # else a newer one came: wait for it too
            return generation
