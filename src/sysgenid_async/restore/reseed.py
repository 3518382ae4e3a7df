"""Ready-made restore hooks for what clones really break. Each is opt-in.

- :func:`reseed_random`: Python's ``random`` module and registered ``random.Random``
  instances. Clones restored from one snapshot share the Mersenne Twister's state, so
  they draw the same "random" span IDs, jitter and sample choices. (``os.urandom`` and
  ``secrets`` are safe: the kernel reseeds its own RNG on a VM fork.)
- :func:`reseed_numpy`: numpy's legacy global generator, when numpy is imported.
- :class:`ProcessIdentity`: a per-process identity (a UUID by default) that a restore
  replaces, so two clones never report as the same instance. It is generation-bound: the
  first read after a restore builds a new one, once the ``RESEED`` hooks have run.
- :class:`Reopenable`: a resource (a connection pool, a client) reopened on restore, since
  clones share sockets' peers, TLS session state and pool identities. The new one is
  opened before the old one is closed, so a caller never finds the slot empty.

``install_default_hooks()`` registers the first three on a registry in the right phases.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar, overload

import anyio

from .bound import GenerationBound
from .callbacks import maybe_await
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

logger = logging.getLogger(__name__)

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
    """An identity that must differ between clones: ``identity.value``, renewed on restore.

    Bound to the generation (phase ``RESEED``): read after a restore, it is rebuilt before
    it is returned, so no caller ever gets the identity of the snapshot. Built on first
    read, from the default device's generation, like any generation-bound value (so it may
    be created at import time, before the device is there).
    """

    @overload
    def __init__(self: ProcessIdentity[uuid.UUID]) -> None: ...

    @overload
    def __init__(self, factory: Callable[[], T]) -> None: ...

    def __init__(self, factory: Callable[[], Any] = uuid.uuid4) -> None:
        self._bound: GenerationBound[T] = GenerationBound(factory, phase=Phase.RESEED)
        _identities.add(self)  # type: ignore[arg-type]

    @property
    def value(self) -> T:
        return self._bound.get()

    def regenerate(self) -> T:
        self._bound.invalidate()
        return self._bound.get()


def regenerate_identities(generation: int) -> None:
    """Renew every live :class:`ProcessIdentity`."""
    for identity in list(_identities):
        identity.regenerate()


class Reopenable(Generic[T]):
    """A resource rebuilt on restore: ``pool.current`` is always a live one.

    ``open()`` makes a new resource, ``close(resource)`` disposes of one (both may be
    async). Register ``reopen`` as a hook (phase ``CONNECTIONS``) or call it yourself.
    A reopen opens the new resource, swaps it in, then closes the old one: ``current`` is
    never empty. Code that must not see its resource closed under it holds a lease,
    ``async with pool.use() as resource:``: the old resource is closed once the last
    lease on it ends.
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
        self._leases: dict[int, int] = {}  # id(resource) -> leases held on it
        self._released: anyio.Event | None = None
        self.reopens = 0

    @property
    def current(self) -> T:
        if self._current is None:
            raise RuntimeError("not opened yet: await start() first")
        return self._current

    async def start(self) -> T:
        if self._current is None:
            self._current = await maybe_await(self._open())
        return self._current

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[T]:
        """Lease the current resource: a reopen meanwhile closes it only after the lease ends."""
        resource = self.current
        key = id(resource)
        self._leases[key] = self._leases.get(key, 0) + 1
        try:
            yield resource
        finally:
            self._leases[key] -= 1
            if not self._leases[key]:
                del self._leases[key]
                if self._released is not None:
                    self._released.set()

    async def reopen(self, generation: int | None = None) -> T:
        """Open a new resource, swap it in, then close the old one once no lease holds it."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            new = await maybe_await(self._open())
            old, self._current = self._current, new
            self.reopens += 1
            if old is not None:
                await self._retire(old)
            return new

    async def _retire(self, old: T) -> None:
        while id(old) in self._leases:
            self._released = anyio.Event()
            await self._released.wait()
        try:
            await maybe_await(self._close(old))
        except Exception as exc:  # the new resource is in place: a failed close is only logged
            logger.error("closing the replaced resource %r failed", old, exc_info=exc)

    async def aclose(self) -> None:
        old, self._current = self._current, None
        if old is not None:
            await maybe_await(self._close(old))


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


@contextlib.contextmanager
def emptied_registries() -> Iterator[None]:
    """Run the block with no registered ``random`` instances nor identities; put the ones
    registered before back afterwards (test isolation: ``sysgenid_async.testing.isolated_state``)."""
    saved = list(_randoms), list(_identities)
    _randoms.clear()
    _identities.clear()
    try:
        yield
    finally:
        _randoms.clear()
        _identities.clear()
        _randoms.update(saved[0])
        _identities.update(saved[1])
