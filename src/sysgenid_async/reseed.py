"""Ready-made restore hooks for what clones really break. Each is opt-in.

- :func:`reseed_random`: Python's ``random`` module and registered ``random.Random``
  instances. Clones restored from one snapshot share the Mersenne Twister's state, so
  they draw the same "random" span IDs, jitter and sample choices. (``os.urandom`` and
  ``secrets`` are safe: the kernel reseeds its own RNG on a VM fork.)
- :func:`reseed_numpy`: numpy's legacy global generator, when numpy is imported.
- :class:`ProcessIdentity`: a per-process identity (a UUID by default) that a restore
  replaces, so two clones never report as the same instance.
- :class:`Reopenable`: a resource (a connection pool, a client) closed and reopened on
  restore, since clones share sockets' peers, TLS session state and pool identities.

``install_default_hooks()`` registers the first three on a registry in the right phases.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, overload

import anyio

from .hooks import Phase, RestoreHooks, restore_hooks

__all__ = [
    "ProcessIdentity",
    "Reopenable",
    "install_default_hooks",
    "register_random",
    "regenerate_identities",
    "reseed_numpy",
    "reseed_random",
]

T = TypeVar("T")

_randoms: weakref.WeakSet[random.Random] = weakref.WeakSet()


def register_random(rng: random.Random) -> random.Random:
    """Have :func:`reseed_random` reseed ``rng`` too (held weakly); returns it."""
    if not isinstance(rng, random.Random):
        raise TypeError(f"expected a random.Random, not {type(rng).__name__}")
    _randoms.add(rng)
    return rng


def reseed_random(generation: int) -> None:
    """Reseed the ``random`` module and every registered ``random.Random`` from os.urandom."""
    random.seed(os.urandom(32))
    for rng in list(_randoms):
        rng.seed(os.urandom(32))


def reseed_numpy(generation: int) -> None:
    """Reseed numpy's legacy global generator, if numpy has been imported (else nothing)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(int.from_bytes(os.urandom(4), "little"))


_identities: weakref.WeakSet[ProcessIdentity[object]] = weakref.WeakSet()


class ProcessIdentity(Generic[T]):
    """An identity that must differ between clones: ``identity.value``, renewed on restore."""

    @overload
    def __init__(self: ProcessIdentity[uuid.UUID]) -> None: ...

    @overload
    def __init__(self, factory: Callable[[], T]) -> None: ...

    def __init__(self, factory: Callable[[], Any] = uuid.uuid4) -> None:
        self._factory: Callable[[], T] = factory
        self._lock = threading.Lock()
        self.value: T = factory()
        _identities.add(self)  # type: ignore[arg-type]

    def regenerate(self) -> T:
        with self._lock:
            self.value = self._factory()
            return self.value


def regenerate_identities(generation: int) -> None:
    """Renew every live :class:`ProcessIdentity`."""
    for identity in list(_identities):
        identity.regenerate()


class Reopenable(Generic[T]):
    """A resource rebuilt on restore: ``pool.current`` is always the live one.

    ``open()`` makes a new resource, ``close(resource)`` disposes of one (both may be
    async). Register ``reopen`` as a hook (phase ``CONNECTIONS``) or call it yourself.
    """

    def __init__(
        self,
        open: Callable[[], T | Awaitable[T]],
        close: Callable[[T], object | Awaitable[object]],
    ) -> None:
        self._open = open
        self._close = close
        self._current: T | None = None
        self._lock: anyio.Lock | None = None
        self.reopens = 0

    @property
    def current(self) -> T:
        if self._current is None:
            raise RuntimeError("not opened yet: await start() first")
        return self._current

    async def start(self) -> T:
        if self._current is None:
            self._current = await _maybe_await(self._open())
        return self._current

    async def reopen(self, generation: int | None = None) -> T:
        """Close the current resource and open a new one (the hook: ``reopen(generation)``)."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            old, self._current = self._current, None
            if old is not None:
                await _maybe_await(self._close(old))
            self._current = await _maybe_await(self._open())
            self.reopens += 1
            return self._current

    async def aclose(self) -> None:
        old, self._current = self._current, None
        if old is not None:
            await _maybe_await(self._close(old))


async def _maybe_await(value: T | Awaitable[T]) -> T:
    if isinstance(value, Awaitable):
        return await value
    return value


def install_default_hooks(hooks: RestoreHooks | None = None) -> RestoreHooks:
    """Register :func:`reseed_random` and :func:`reseed_numpy` (phase RESEED) and
    :func:`regenerate_identities` (phase IDENTITIES) on ``hooks`` (default: the process's)."""
    registry = restore_hooks if hooks is None else hooks
    for function in (reseed_random, reseed_numpy, regenerate_identities):
        registry.unregister(function)
    registry.register(reseed_random, phase=Phase.RESEED)
    registry.register(reseed_numpy, phase=Phase.RESEED)
    registry.register(regenerate_identities, phase=Phase.IDENTITIES)
    return registry
