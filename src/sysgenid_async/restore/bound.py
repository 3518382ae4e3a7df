"""Generation-bound values: rebuilt lazily when the system generation changes.

    @generation_bound
    def signing_key() -> bytes:
        return os.urandom(32)

    hmac.new(signing_key(), message, "sha256")   # a new key after every restore

- The hot path is one read of the mapped page and one comparison: no syscall, no lock; only a
  changed generation takes the lock and calls the factory again.
- A value is never built from state older than its generation: first, every restore hook up
  to its ``phase`` must have succeeded for that generation (its registry's gate waits for the
  restore watcher's pass, or, with no watcher, runs the sync hooks there).
- The generation comes from ``probe=``, else from the gate: the restore watcher's own file
  while one serves the value's registry, else the process probe (restore/probe.py; on v4 a
  file per check, so pass a probe or run a watcher where that cost matters).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Awaitable, Callable
from typing import Generic, TypeAlias, TypeVar, overload

import anyio

from ..device import Device
from ..handle import Handle
from .callbacks import check_callable_as
from .gate import RESTORE_WAIT_SECONDS, RestoreGate
from .hooks import RestoreHooks, restore_hooks
from .probe import GenerationProbe

__all__ = ["AsyncGenerationBound", "GenerationBound", "GenerationProbe", "generation_bound"]

T = TypeVar("T")


_UNSET = object()
#: What the hot path indexes: the probe's mapped page as u32 words, or a stand-in.
PageWords: TypeAlias = "memoryview | tuple[int]"
# The stand-in for a probe with no mapped page (any object with ``generation``): its one word
# is never a u32 nor the unbuilt marker, so the hot path always falls to the slow one.
_NO_PAGE: PageWords = (-2,)


def _page_view_of(probe: GenerationProbe) -> PageWords:
    """The live page view behind ``probe`` (a handle on the device), or ``_NO_PAGE``."""
    device = probe.device if isinstance(probe, Handle) else probe
    view = device.page_view() if isinstance(device, Device) else None
    return _NO_PAGE if view is None else view


class _Bound:
    """The state both bound values share: the probe, the value, and the generation it is for.

    The hot path indexes the probe's page view, cached here: no property, no lookup of the
    shared probe. When that probe closes (a restore watcher starting or stopping swaps the
    shared probe), its view is released, indexing raises ``ValueError``, and the slow path
    looks the probe up again.
    """

    def __init__(
        self, factory: Callable[[], object], probe: GenerationProbe | None, phase: float | None,
        hooks: RestoreHooks | None, *, is_async: bool,
    ) -> None:
        if not callable(factory):
            raise TypeError(f"factory must be callable, not {type(factory).__name__}")
        _check_options(phase, hooks)
        _check_factory(factory, is_async=is_async)
        self._probe = probe
        self._hooks = hooks
        # Built only once every hook up to this phase has succeeded for the generation.
        self._phase = math.inf if phase is None else phase
        self._view: PageWords = _NO_PAGE
        self._generation = -1  # never a u32: the first get() builds
        self._value: object = _UNSET
        self.rebuilds = 0

    @property
    def _gate(self) -> RestoreGate:
        return (restore_hooks if self._hooks is None else self._hooks).gate

    def _current(self) -> tuple[GenerationProbe, int]:
        """Look the probe up, cache its page view, and read its generation."""
        probe = self._probe or self._gate.probe()
        generation = probe.generation  # raises the probe's own error (closed, not running)
        self._view = _page_view_of(probe)
        return probe, generation

    def invalidate(self) -> None:
        """Force a rebuild on the next call."""
        self._generation = -1


class GenerationBound(_Bound, Generic[T]):
    """A value built by ``factory()`` and rebuilt when the generation differs from its own.

    Thread-safe: concurrent callers after a change see one rebuild. Call it, or bind
    ``get = value.get`` in a hot loop: a method call is cheaper than an instance call.
    """

    def __init__(
        self,
        factory: Callable[[], T],
        *,
        probe: GenerationProbe | None = None,
        phase: float | None = None,
        hooks: RestoreHooks | None = None,
    ) -> None:
        super().__init__(factory, probe, phase, hooks, is_async=False)
        self._factory = factory
        self._lock = threading.Lock()

    def get(self) -> T:
        try:
            if self._view[0] == self._generation:
                return self._value  # type: ignore[return-value]
        except ValueError:  # the cached page was released: its probe closed
            pass
        return self._slow_get()

    __call__ = get  # one Python frame, not two

    def _slow_get(self) -> T:
        while True:
            _, generation = self._current()
            if generation == self._generation:
                return self._value  # type: ignore[return-value]
            # The hooks first, and outside the lock: a hook may read this value too.
            self._gate.require(generation, self._phase)
            with self._lock:
                _, generation_now = self._current()
                if generation_now == self._generation:
                    return self._value  # type: ignore[return-value]
                if generation_now != generation:
                    continue  # a newer generation came meanwhile: its hooks first
                value = self._factory()
                self._value, self._generation = value, generation
                self.rebuilds += 1
                self._gate.track(self)
                return value


class AsyncGenerationBound(_Bound, Generic[T]):
    """The async twin: ``await value.get()`` rebuilds with ``await factory()`` after a change."""

    def __init__(
        self,
        factory: Callable[[], Awaitable[T]],
        *,
        probe: GenerationProbe | None = None,
        phase: float | None = None,
        hooks: RestoreHooks | None = None,
    ) -> None:
        super().__init__(factory, probe, phase, hooks, is_async=True)
        self._factory = factory
        self._lock: anyio.Lock | None = None

    async def get(self) -> T:
        try:
            if self._view[0] == self._generation:
                return self._value  # type: ignore[return-value]
        except ValueError:  # the cached page was released: its probe closed
            pass
        while True:
            _, generation = self._current()
            if generation == self._generation:
                return self._value  # type: ignore[return-value]
            await self._gate.wait_restored(generation, self._phase, RESTORE_WAIT_SECONDS)
            if self._lock is None:
                self._lock = anyio.Lock()
            async with self._lock:
                _, generation_now = self._current()
                if generation_now == self._generation:
                    return self._value  # type: ignore[return-value]
                if generation_now != generation:
                    continue  # a newer generation came meanwhile: its hooks first
                value = await self._factory()
                self._value, self._generation = value, generation
                self.rebuilds += 1
                self._gate.track(self)
                return value


@overload
def generation_bound(factory: Callable[[], T], /) -> GenerationBound[T]: ...


@overload
def generation_bound(
    *, phase: float | None = None, hooks: RestoreHooks | None = None
) -> Callable[[Callable[[], T]], GenerationBound[T]]: ...


def generation_bound(
    factory: Callable[[], T] | None = None, /, *, phase: float | None = None, hooks: RestoreHooks | None = None
) -> GenerationBound[T] | Callable[[Callable[[], T]], GenerationBound[T]]:
    """Decorate a zero-argument factory: calling the result returns the current value.

    ``@generation_bound`` or ``@generation_bound(phase=Phase.RESEED)``: the value is built
    for a generation only once the restore hooks up to ``phase`` (default: all) have
    succeeded for it. An ``async def`` factory needs :class:`AsyncGenerationBound`.
    """
    if factory is None:
        _check_options(phase, hooks)  # now, not when the decorator is applied
        return lambda f: GenerationBound(f, phase=phase, hooks=hooks)
    return GenerationBound(factory, phase=phase, hooks=hooks)


def _check_options(phase: object, hooks: object) -> None:
    if phase is not None and (isinstance(phase, bool) or not isinstance(phase, (int, float))):
        raise TypeError(f"phase must be a Phase (or a priority), not {type(phase).__name__}")
    if hooks is not None and not isinstance(hooks, RestoreHooks):
        raise TypeError(f"hooks must be a RestoreHooks registry, not {type(hooks).__name__}")


def _check_factory(factory: Callable[..., object], *, is_async: bool) -> None:
    """Refuse at decoration what would fail on use: an ``async def`` where a sync factory is
    needed (and the reverse), or a factory that cannot be called with no argument."""
    import inspect  # here, not at import: it is slow to import

    if inspect.iscoroutinefunction(factory) and not is_async:
        raise TypeError(
            f"{getattr(factory, '__qualname__', factory)!s} is an async def: use AsyncGenerationBound, "
            "whose get() awaits it (a sync bound value would store the coroutine, once)"
        )
    check_callable_as(factory, (), "a generation-bound factory is called with no argument")
