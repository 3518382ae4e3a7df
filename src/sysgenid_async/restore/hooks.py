"""Restore hooks: callbacks that rebuild unique state when the generation changes.

    from sysgenid_async import Phase, on_restore

    @on_restore(phase=Phase.RESEED)
    def reseed(generation: int) -> None:
        random.seed(os.urandom(32))

    @on_restore(timeout=5)
    async def reconnect(generation: int) -> None:
        await pool.reopen()

Order: by phase (``RESEED``, ``IDENTITIES``, ``SECRETS``, ``CACHES``, ``CONNECTIONS``, then
``DEFAULT``), or by an explicit ``priority`` (lower first); ties run in registration order.
The hooks run one after another, so a hook may rely on the ones before it. When a hook
fails, the rest of its phase still runs and the failures are raised together as a
:class:`RestoreHooksError` (an ``ExceptionGroup``); later phases do not run on top of a
failed one. A retry starts again at the failed phase, so hooks must be idempotent.

Each registry has a :class:`~sysgenid_async.restore.gate.RestoreGate` (``hooks.gate``): the record of
which generation it has been restored for, which generation-bound values consult.

A registry also keeps the two other kinds of the snapshot lifecycle (docs/lifecycle.md):
``@on_before_snapshot(phase=...)`` hooks run when ``sysgenid-async prepare`` asks, in
*reverse* phase order (connections first, then caches, secrets, identities); and
``@on_resume(phase=...)`` hooks run when ``sysgenid-async resume`` continues the original
VM (no restore followed), in phase order. Both are called as ``hook(generation)``, with the
same timeouts; every hook runs, and the failures are gathered.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import logging
import math
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import anyio

from ..timeouts import Deadline, validate_timeout
from .gate import LifecyclePass, RestoreGate, RestoreProgress, run_restore_pass

if sys.version_info < (3, 11):  # pragma: no cover - the backport on 3.10
    from exceptiongroup import ExceptionGroup

__all__ = [
    "HookError",
    "HookKind",
    "Phase",
    "RestoreHook",
    "RestoreHooks",
    "RestoreHooksError",
    "on_before_snapshot",
    "on_restore",
    "on_resume",
    "restore_hooks",
]

logger = logging.getLogger(__name__)

HookFunction = Callable[[int], object]
#: A hook: ``hook(generation)``, sync or async. Typed so that a checker rejects another signature.
F = TypeVar("F", bound=Callable[[int], object])


class Phase(enum.IntEnum):
    """Named places in the run order: what must be unique first, what depends on it after."""

    #: random number generators: everything after may draw from them
    RESEED = 100
    #: per-process identities (UUIDs, instance ids)
    IDENTITIES = 200
    #: keys, tokens, nonces derived from the above
    SECRETS = 300
    #: caches of anything above
    CACHES = 400
    #: connections and pools, which may carry identities and secrets
    CONNECTIONS = 500
    #: hooks registered without a phase
    DEFAULT = 600


class HookKind(enum.Enum):
    """When a hook runs in the snapshot lifecycle."""

    #: after a restore (a generation change): ``@on_restore``
    RESTORE = "restore"
    #: before a snapshot, when ``prepare`` asks: ``@on_before_snapshot``
    BEFORE_SNAPSHOT = "before-snapshot"
    #: when ``resume`` continues the original VM after a prepare: ``@on_resume``
    RESUME = "resume"


class HookError(Exception):
    """One hook's failure, naming the hook; the original error is its ``__cause__``."""

    def __init__(
        self, hook: RestoreHook, generation: int, error: BaseException, kind: HookKind = HookKind.RESTORE
    ) -> None:
        reason = "timed out" if isinstance(error, TimeoutError) else f"raised {error!r}"
        super().__init__(f"{kind.value} hook {hook.name} {reason} for generation {generation}")
        self.hook = hook
        self.generation = generation
        self.kind = kind
        self.__cause__ = error


class RestoreHooksError(ExceptionGroup[HookError]):
    """Some hooks failed for a generation; every other hook still ran."""

    generation: int
    hooks: list[RestoreHook]

    def __new__(cls, generation: int, errors: Sequence[HookError]) -> RestoreHooksError:
        group = super().__new__(cls, f"{len(errors)} restore hook(s) failed for generation {generation}", errors)
        group.generation = generation
        group.hooks = [error.hook for error in errors]
        return group

    def derive(self, excs: Sequence[Exception]) -> RestoreHooksError:  # type: ignore[override]
        return RestoreHooksError(self.generation, [e for e in excs if isinstance(e, HookError)])


@dataclass(eq=False)
class RestoreHook:
    """A registered hook."""

    name: str
    priority: int
    timeout: float | None
    sequence: int
    _target: Callable[[], HookFunction | None] = field(repr=False)
    is_async: bool = field(repr=False, default=False)

    @property
    def function(self) -> HookFunction | None:
        """The callable, or None once a weakly held one has been collected."""
        return self._target()

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
        """A sync hook can only be timed out from outside, so it runs in a worker thread. On its
        timeout the thread is left to finish (counted: no second copy starts meanwhile). When
        the caller is cancelled (a newer generation), it is waited for, up to its timeout, so
        that the next pass never overlaps it; a call that had not started yet never starts."""
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


def _run_order(hook: RestoreHook) -> tuple[int, int]:
    return hook.priority, hook.sequence


def _hook_name(function: Callable[..., Any]) -> str:
    qualname = getattr(function, "__qualname__", None)
    return qualname.rsplit("<locals>.", 1)[-1] if qualname else repr(function)


class RestoreHooks:
    """A registry of restore hooks. The process-wide one is :data:`restore_hooks`."""

    def __init__(self) -> None:
        self._hooks: list[RestoreHook] = []
        # The lifecycle's other kinds, each kept in registration order (sorted when run).
        self._lifecycle: dict[HookKind, list[RestoreHook]] = {HookKind.BEFORE_SNAPSHOT: [], HookKind.RESUME: []}
        #: ``@hooks.before_snapshot(phase=...)``: run by ``prepare``, connections first.
        self.before_snapshot = LifecycleRegistrar(self, HookKind.BEFORE_SNAPSHOT)
        #: ``@hooks.on_resume(phase=...)``: run by ``resume``, in phase order.
        self.on_resume = LifecycleRegistrar(self, HookKind.RESUME)
        self._lock = threading.Lock()
        self._sequence = itertools.count()
        #: Which generation this registry has been restored for (see :mod:`~sysgenid_async.restore.gate`).
        self.gate = RestoreGate(self)

    @overload
    def register(
        self,
        function: F,
        *,
        phase: Phase = ...,
        priority: int | None = ...,
        timeout: float | None = ...,
        weak: bool = ...,
        name: str | None = ...,
    ) -> F: ...

    @overload
    def register(
        self,
        function: None = None,
        *,
        phase: Phase = ...,
        priority: int | None = ...,
        timeout: float | None = ...,
        weak: bool = ...,
        name: str | None = ...,
    ) -> Callable[[F], F]: ...

    def register(
        self,
        function: F | None = None,
        *,
        phase: Phase = Phase.DEFAULT,
        priority: int | None = None,
        timeout: float | None = None,
        weak: bool = False,
        name: str | None = None,
    ) -> F | Callable[[F], F]:
        """Register ``function(generation)``, sync or async. Usable as a decorator, with or
        without arguments; returns the function unchanged.

        ``weak=True`` holds it by weak reference (a bound method through ``WeakMethod``), so
        the hook vanishes with its object, as CRaC's resources do.
        """
        if function is None:
            return lambda f: self.register(f, phase=phase, priority=priority, timeout=timeout, weak=weak, name=name)
        hook = self._make_hook(function, phase=phase, priority=priority, timeout=timeout, weak=weak, name=name)
        with self._lock:  # kept in run order; sequence numbers only grow, so insort keeps ties in order
            bisect.insort(self._hooks, hook, key=_run_order)
        return function

    def _add_lifecycle_hook(
        self, kind: HookKind, function: F, *, phase: Phase, timeout: float | None, weak: bool, name: str | None
    ) -> F:
        hook = self._make_hook(function, phase=phase, priority=None, timeout=timeout, weak=weak, name=name)
        with self._lock:
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

        target: Callable[[], HookFunction | None]
        if weak:
            reference = weakref.WeakMethod(function) if inspect.ismethod(function) else weakref.ref(function)
            target = reference
        else:
            target = lambda: function  # noqa: E731 - a strong reference with the weakref's interface
        return RestoreHook(
            name=name or _hook_name(function),
            priority=phase.value if priority is None else priority,
            timeout=seconds,
            sequence=next(self._sequence),
            _target=target,
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
        await self.run_lifecycle_into(result, kind, generation, validate_timeout(timeout))
        return result

    async def run_lifecycle_into(
        self, result: LifecyclePass, kind: HookKind, generation: int, budget: float | None
    ) -> None:
        """Run every hook of ``kind`` once, in order, noting into ``result`` as it goes (a
        cancelled pass leaves what it did there).

        Unlike a restore pass, a failure does not stop the others: before a snapshot every
        pool that can be closed should be. ``budget`` bounds the whole pass (each hook also
        has its own timeout): the hook it interrupts has timed out, the ones after it are
        not run.
        """
        hooks = self.lifecycle_hooks(kind)
        result.not_run = list(hooks)
        deadline = Deadline(budget)  # a run of sync hooks never yields: each looks before it starts
        with anyio.move_on_after(math.inf if budget is None else budget) as budget_scope:
            for hook in hooks:
                if deadline.expired():
                    break
                error = await hook.attempt(generation, kind)
                del result.not_run[0]
                if error is not None:
                    result.errors.append(error)
        if budget_scope.cancelled_caught and result.not_run:
            interrupted = result.not_run.pop(0)
            timed_out = TimeoutError(f"the {kind.value} pass ran out of time")
            result.errors.append(interrupted._failed(generation, timed_out, kind))

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


class LifecycleRegistrar:
    """Registers hooks of one lifecycle kind on a registry (``hooks.before_snapshot``,
    ``hooks.on_resume``), as a decorator with or without arguments, typed like ``register``."""

    def __init__(self, hooks: RestoreHooks, kind: HookKind) -> None:
        self._hooks = hooks
        self.kind = kind

    @overload
    def __call__(
        self, function: F, *, phase: Phase = ..., timeout: float | None = ..., weak: bool = ..., name: str | None = ...
    ) -> F: ...

    @overload
    def __call__(
        self,
        function: None = None,
        *,
        phase: Phase = ...,
        timeout: float | None = ...,
        weak: bool = ...,
        name: str | None = ...,
    ) -> Callable[[F], F]: ...

    def __call__(
        self,
        function: F | None = None,
        *,
        phase: Phase = Phase.DEFAULT,
        timeout: float | None = None,
        weak: bool = False,
        name: str | None = None,
    ) -> F | Callable[[F], F]:
        if function is None:
            return lambda f: self(f, phase=phase, timeout=timeout, weak=weak, name=name)
        return self._hooks._add_lifecycle_hook(self.kind, function, phase=phase, timeout=timeout, weak=weak, name=name)


def check_callable_as(function: Callable[..., Any], arguments: tuple[object, ...], how: str) -> None:
    """Refuse, when it is registered, a callable that cannot take ``arguments``; ``how`` says
    how it is called (the start of the message)."""
    import inspect  # here, not at import: it is slow to import

    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins have none: let them through
        return
    try:
        signature.bind(*arguments)
    except TypeError:
        raise TypeError(f"{how}; {_hook_name(function)}{signature} cannot be") from None


def _caller_cancelled() -> bool:
    """Whether the task running the hooks is being cancelled (an anyio scope, or asyncio's own)."""
    if anyio.current_effective_deadline() == -math.inf:
        return True
    try:
        import asyncio

        task = asyncio.current_task()
    except RuntimeError:  # not on asyncio
        return False
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+
    return bool(cancelling()) if callable(cancelling) else False


#: The process-wide registry that :class:`~sysgenid_async.restore.RestoreWatcher` runs by default.
restore_hooks = RestoreHooks()
#: Register on the process-wide registry: ``@on_restore`` or ``@on_restore(phase=...)``.
on_restore = restore_hooks.register
#: A hook that ``sysgenid-async prepare`` runs before a snapshot: ``@on_before_snapshot(phase=...)``.
on_before_snapshot = restore_hooks.before_snapshot
#: A hook that ``sysgenid-async resume`` runs when the original VM goes on: ``@on_resume(phase=...)``.
on_resume = restore_hooks.on_resume
