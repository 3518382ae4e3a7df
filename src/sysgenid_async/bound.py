"""Generation-bound values: rebuilt lazily when the system generation changes.

    @generation_bound
    def signing_key() -> bytes:
        return os.urandom(32)

    hmac.new(signing_key(), message, "sha256")   # a new key after every restore

The hot path is one read of the mapped page and one comparison: no syscall, no lock.
Only a changed generation takes the lock and calls the factory again.

The generation comes from a probe. By default, while a
:class:`~sysgenid_async.RestoreWatcher` runs in the process, that is the watcher's own
file (acknowledged after the hooks). Otherwise it is a process-wide, probe-only handle on
the default device, opened on first use: on v8 it does not count as a watcher; on v4
every open file is a watcher, so it acknowledges a change as soon as a bound value
notices it, and until then shows as outdated.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

import anyio

from .device import Device
from .errors import StaleGenerationError

__all__ = ["AsyncGenerationBound", "GenerationBound", "GenerationProbe", "generation_bound", "shared_probe"]

T = TypeVar("T")


class GenerationProbe(Protocol):
    """Anything with a cheap ``generation`` (a Device, an AsyncSysGenID, a RestoreWatcher)."""

    @property
    def generation(self) -> int: ...


_shared: Device | None = None
_shared_lock = threading.Lock()
# While a RestoreWatcher runs, bound values read its page: its file is acknowledged after
# the hooks, so no extra watcher is left outdated (on v4 every open file is a watcher).
_watcher_device: Device | None = None


def shared_probe() -> Device:
    """The process-wide probe: a running restore watcher's device, else a probe-only handle
    on the default device (opened on first use)."""
    global _shared
    watcher_device = _watcher_device
    if watcher_device is not None:
        return watcher_device
    probe = _shared
    if probe is None or probe.closed:
        with _shared_lock:
            if _shared is None or _shared.closed:
                _shared = Device.open(watcher=False)
            probe = _shared
    return probe


def use_watcher_device(device: Device | None, *, previous: Device | None = None) -> None:
    """Called by a RestoreWatcher as it starts (its device) and stops (None, if still its own)."""
    global _watcher_device
    with _shared_lock:
        if device is None and _watcher_device is not previous:
            return
        _watcher_device = device
    if device is not None:
        close_shared_probe()  # an outdated probe-only file must not hold orchestrators back


def close_shared_probe() -> None:
    """Close the process-wide probe (the next bound value to look opens it again)."""
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.close()
            _shared = None


def _acknowledge_probe(probe: GenerationProbe) -> None:
    # On v4 the standalone probe's file is a watcher: confirm what it has seen. (Never a
    # restore watcher's file: that one is acknowledged after the hooks, by the watcher.)
    if probe is _shared and isinstance(probe, Device) and probe.watcher and not probe.closed:
        pending = probe.read_nowait()
        if pending is not None:
            with contextlib.suppress(StaleGenerationError):  # a newer one: seen next time
                probe.ack(pending)


_UNSET = object()
# Stands in for a page view when the probe has none (any object with ``generation``): its
# one value is never a u32 nor the unbuilt marker, so the hot path falls to the slow one.
_NO_VIEW = (-2,)


def _page_view_of(probe: GenerationProbe) -> memoryview | tuple[int]:
    """The live page view behind ``probe`` (a Device or a handle on one), or ``_NO_VIEW``."""
    device = probe if isinstance(probe, Device) else getattr(probe, "device", None)
    view = device.page_view() if isinstance(device, Device) else None
    return _NO_VIEW if view is None else view


class _Bound:
    """The state both bound values share: the probe, the value, and the generation it is for.

    The hot path indexes the probe's page view, cached here: no property, no lookup of the
    shared probe. When that probe closes (a restore watcher starting or stopping swaps the
    shared probe), its view is released, indexing raises ``ValueError``, and the slow path
    looks the probe up again.
    """

    def __init__(self, factory: Callable[[], object], probe: GenerationProbe | None) -> None:
        if not callable(factory):
            raise TypeError(f"factory must be callable, not {type(factory).__name__}")
        self._probe = probe
        self._view: memoryview | tuple[int] = _NO_VIEW
        self._generation = -1  # never a u32: the first get() builds
        self._value: object = _UNSET
        self.rebuilds = 0

    @property
    def probe(self) -> GenerationProbe:
        """The probe given, or the process-wide one (looked up on each use)."""
        return self._probe or shared_probe()

    def _current(self) -> tuple[GenerationProbe, int]:
        """Look the probe up, cache its page view, and read its generation."""
        probe = self._probe or shared_probe()
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

    def __init__(self, factory: Callable[[], T], *, probe: GenerationProbe | None = None) -> None:
        super().__init__(factory, probe)
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
        probe, generation = self._current()
        if generation == self._generation:
            return self._value  # type: ignore[return-value]
        with self._lock:
            probe, generation = self._current()
            if generation != self._generation:
                _acknowledge_probe(probe)
                value = self._factory()
                self._value, self._generation = value, generation
                self.rebuilds += 1
            return self._value  # type: ignore[return-value]


class AsyncGenerationBound(_Bound, Generic[T]):
    """The async twin: ``await value.get()`` rebuilds with ``await factory()`` after a change."""

    def __init__(self, factory: Callable[[], Awaitable[T]], *, probe: GenerationProbe | None = None) -> None:
        super().__init__(factory, probe)
        self._factory = factory
        self._lock: anyio.Lock | None = None

    async def get(self) -> T:
        try:
            if self._view[0] == self._generation:
                return self._value  # type: ignore[return-value]
        except ValueError:  # the cached page was released: its probe closed
            pass
        probe, generation = self._current()
        if generation == self._generation:
            return self._value  # type: ignore[return-value]
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            probe, generation = self._current()
            if generation != self._generation:
                _acknowledge_probe(probe)
                value = await self._factory()
                self._value, self._generation = value, generation
                self.rebuilds += 1
            return self._value  # type: ignore[return-value]


def generation_bound(factory: Callable[[], T]) -> GenerationBound[T]:
    """Decorate a zero-argument factory: calling the result returns the current value."""
    return GenerationBound(factory)
