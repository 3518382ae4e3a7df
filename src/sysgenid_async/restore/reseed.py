"""Ready-made restore hooks for what clones really break. Each is opt-in.

- :func:`reseed_random`: Python's ``random`` module and registered ``random.Random``
  instances. Clones restored from one snapshot share the Mersenne Twister's state, so
  they draw the same "random" span IDs, jitter and sample choices.
- :func:`reseed_numpy`: numpy's legacy global generator, when numpy is imported, and the
  registered ``numpy.random.Generator`` and ``RandomState`` instances, from 128 bits.
- :func:`reseed_openssl`: the user-space generators of OpenSSL in ``ssl`` and in
  ``cryptography`` (its own statically linked OpenSSL), whichever is loaded.
- :class:`ProcessIdentity`: a per-process identity (a UUID by default) that a restore
  replaces, so two clones never report as the same instance. It is generation-bound: the
  first read after a restore builds a new one, once the ``RESEED`` hooks have run.
- :class:`Reopenable`: a resource (a connection pool, a client) reopened on restore, since
  clones share sockets' peers, TLS session state and pool identities. The new one is
  opened before the old one is closed, so a caller never finds the slot empty.

``os.urandom`` and ``secrets`` read the kernel's generator: it is reseeded on a VM fork
where the hypervisor's VM generation ID reaches the kernel (vmgenid), not after a
``trigger`` from tooling. ``install_default_hooks()`` registers the reseeds and the
identities on a registry in the right phases.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Union, overload

if TYPE_CHECKING:
    import numpy


from .bound import GenerationBound
from .hooks import RestoreHooks, restore_hooks
from .phases import Phase

__all__ = [
    "ProcessIdentity",
    "install_default_hooks",
    "register_random",
    "regenerate_identities",
    "reseed_numpy",
    "reseed_openssl",
    "reseed_random",
    "unregister_random",
]

T = TypeVar("T")


Generator = Union[random.Random, "numpy.random.Generator", "numpy.random.RandomState"]
G = TypeVar("G", bound=Generator)

# Held until unregistered: numpy's generators take no weak reference, and a reseed that
# stops because the collector ran would be behaviour nobody asked for.
_randoms: list[Generator] = []
SEED_BYTES = 16  # 128 bits: a 32-bit seed repeats among tens of thousands of clones


def _numpy_kind(rng: object) -> str | None:
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return None
    if isinstance(rng, numpy.random.Generator):
        return "Generator"
    if isinstance(rng, numpy.random.RandomState):
        return "RandomState"
    return None


def register_random(rng: G) -> G:
    """Have the reseeds renew ``rng`` too: a ``random.Random`` (:func:`reseed_random`), a numpy
    ``Generator`` or ``RandomState`` (:func:`reseed_numpy`). Held until :func:`unregister_random`."""
    if not isinstance(rng, random.Random) and _numpy_kind(rng) is None:
        raise TypeError(
            f"expected a random.Random or a numpy Generator or RandomState, not {type(rng).__name__}"
        )
    if not any(rng is known for known in _randoms):
        _randoms.append(rng)
    return rng


def unregister_random(rng: Generator) -> bool:
    """Stop reseeding ``rng``; False if it was not registered."""
    for index, known in enumerate(_randoms):
        if known is rng:
            del _randoms[index]
            return True
    return False


def reseed_random(generation: int) -> None:
    """Reseed the ``random`` module and every registered ``random.Random`` from os.urandom."""
    random.seed(os.urandom(32))
    for rng in list(_randoms):
        if isinstance(rng, random.Random):
            rng.seed(os.urandom(32))


def _numpy_seed(numpy: Any) -> Any:
    return numpy.frombuffer(os.urandom(SEED_BYTES), dtype=numpy.uint32)


def reseed_numpy(generation: int) -> None:
    """Reseed numpy's legacy global generator and every registered numpy generator from
    128 bits of os.urandom, if numpy has been imported (else nothing)."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return
    numpy.random.seed(_numpy_seed(numpy))
    for rng in list(_randoms):
        if isinstance(rng, numpy.random.RandomState):
            rng.seed(_numpy_seed(numpy))
        elif isinstance(rng, numpy.random.Generator):
            # In place, so every holder of the Generator sees the new stream: a fresh bit
            # generator of the same kind, seeded from the OS, lends its state.
            bits = rng.bit_generator
            seeds = numpy.random.SeedSequence(int.from_bytes(os.urandom(SEED_BYTES), "little"))
            bits.state = type(bits)(seeds).state


#: OpenSSL's RAND_add: the bytes mixed in, and the entropy they are credited with.
OPENSSL_RESEED_BYTES = 48


def reseed_openssl(generation: int) -> None:
    """Reseed OpenSSL's user-space generators with fresh kernel bytes (``RAND_add``).

    A clone copies OpenSSL's DRBG state with the rest of memory, and OpenSSL notices a
    fork but not a VM clone. Python's ``ssl`` (the system's libcrypto) and ``cryptography``
    (its own OpenSSL, linked into its extension) keep separate generators: each is reseeded
    if its module is loaded; one loaded later seeds itself fresh.
    """
    if "_ssl" in sys.modules:
        import ssl

        ssl.RAND_add(os.urandom(OPENSSL_RESEED_BYTES), float(OPENSSL_RESEED_BYTES))
    if "cryptography.hazmat.bindings._rust" in sys.modules:
        try:
            from cryptography.hazmat.bindings.openssl.binding import Binding

            rand_add = Binding().lib.RAND_add
        except (ImportError, AttributeError) as exc:
            # Failing the hook keeps the process from being ready with the snapshot's state.
            raise RuntimeError(
                "this cryptography exposes no RAND_add: its OpenSSL generator cannot be reseeded"
            ) from exc
        rand_add(os.urandom(OPENSSL_RESEED_BYTES), OPENSSL_RESEED_BYTES, float(OPENSSL_RESEED_BYTES))


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


def install_default_hooks(hooks: RestoreHooks | None = None) -> RestoreHooks:
    """Register :func:`reseed_random`, :func:`reseed_numpy` and :func:`reseed_openssl` (phase
    RESEED) and :func:`regenerate_identities` (phase IDENTITIES) on ``hooks`` (default: the
    process's)."""
    registry = restore_hooks if hooks is None else hooks
    for function in (reseed_random, reseed_numpy, reseed_openssl, regenerate_identities):
        registry.unregister(function)
    registry.register(reseed_random, phase=Phase.RESEED)
    registry.register(reseed_numpy, phase=Phase.RESEED)
    registry.register(reseed_openssl, phase=Phase.RESEED)
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
        _randoms[:] = saved[0]
        _identities.clear()
        _identities.update(saved[1])
