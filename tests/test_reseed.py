"""The ready-made hooks: what a clone shares, each reseeded or renewed."""

from __future__ import annotations

import copy
import random
import ssl
import uuid
from collections.abc import Callable

import numpy
import pytest

from sysgenid_async.integrations import Reopenable
from sysgenid_async.restore import Phase, RestoreHooks
from sysgenid_async.restore.reseed import (
    ProcessIdentity,
    install_default_hooks,
    regenerate_identities,
    register_random,
    reseed_numpy,
    reseed_openssl,
    reseed_random,
    unregister_random,
)
from sysgenid_async.testing import SimulatedDevice, isolated_state


def test_reseed_random_breaks_the_shared_sequence() -> None:
    # two clones hold the same state; without a reseed they draw the same values
    clone_state = random.getstate()
    rng = register_random(random.Random(1234))
    rng_state = rng.getstate()
    without = (random.getrandbits(64), rng.getrandbits(64))
    random.setstate(clone_state)
    rng.setstate(rng_state)
    assert (random.getrandbits(64), rng.getrandbits(64)) == without, "the clone's draws are identical"
    random.setstate(clone_state)
    rng.setstate(rng_state)
    reseed_random(1)
    assert random.getrandbits(64) != without[0]
    assert rng.getrandbits(64) != without[1]
    with pytest.raises(TypeError):
        register_random(42)  # type: ignore[type-var]


def test_reseed_numpy() -> None:
    state = numpy.random.get_state()
    without = numpy.random.randint(0, 2**62)
    numpy.random.set_state(state)
    reseed_numpy(1)
    assert numpy.random.randint(0, 2**62) != without


def test_reseed_numpy_seeds_the_legacy_generator_from_128_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 32-bit seed repeats among clones: with 2**32 seeds, 77,000 clones share one by even odds."""
    seeds: list[object] = []
    monkeypatch.setattr(numpy.random, "seed", seeds.append)
    reseed_numpy(1)
    reseed_numpy(2)
    assert all(isinstance(seed, numpy.ndarray) and seed.dtype == numpy.uint32 and seed.size == 4 for seed in seeds)
    assert len(seeds) == 2 and not numpy.array_equal(seeds[0], seeds[1])  # type: ignore[arg-type]


NumpyGenerator = numpy.random.Generator | numpy.random.RandomState


def clone_of(rng: NumpyGenerator) -> Callable[[], None]:
    """What a second clone holds: calling it puts ``rng`` back in the state it has now."""
    if isinstance(rng, numpy.random.RandomState):
        legacy = rng.get_state()
        return lambda: rng.set_state(legacy)
    state = copy.deepcopy(rng.bit_generator.state)
    return lambda: setattr(rng.bit_generator, "state", state)


@pytest.mark.parametrize("make", [numpy.random.default_rng, numpy.random.RandomState,
                                  lambda: numpy.random.Generator(numpy.random.Philox())],
                         ids=["default_rng", "RandomState", "Philox"])
def test_registered_numpy_generators_are_reseeded_in_place(make: Callable[[], NumpyGenerator]) -> None:
    with isolated_state():
        rng = register_random(make())
        assert register_random(rng) is rng
        kind = type(rng.bit_generator) if isinstance(rng, numpy.random.Generator) else None
        back_to_snapshot = clone_of(rng)
        without = rng.random()
        back_to_snapshot()
        assert rng.random() == without, "the clone draws the same"
        back_to_snapshot()
        reseed_numpy(1)
        assert rng.random() != without
        if isinstance(rng, numpy.random.Generator):
            assert type(rng.bit_generator) is kind, "the same kind of generator after the reseed"
        assert unregister_random(rng) is True and unregister_random(rng) is False
        back_to_snapshot()
        reseed_numpy(2)
        assert rng.random() == without, "an unregistered generator is left alone"


def test_register_random_refuses_other_objects() -> None:
    with pytest.raises(TypeError, match=r"random\.Random or a numpy Generator or RandomState, not int"):
        register_random(42)  # type: ignore[type-var]
    with pytest.raises(TypeError, match=r"not PCG64$"):
        register_random(numpy.random.PCG64())  # type: ignore[type-var]


def test_reseed_openssl_feeds_pythons_ssl(monkeypatch: pytest.MonkeyPatch) -> None:
    fed: list[tuple[bytes, float]] = []
    real = ssl.RAND_add

    def spy(data: bytes, entropy: float) -> None:
        fed.append((data, entropy))
        real(data, entropy)

    monkeypatch.setattr(ssl, "RAND_add", spy)
    reseed_openssl(1)
    reseed_openssl(2)
    assert [(len(data), entropy) for data, entropy in fed] == [(48, 48.0), (48, 48.0)] and fed[0] != fed[1]
    assert ssl.RAND_status()


def test_identities_are_renewed(sysgenid_sim: SimulatedDevice) -> None:
    instance: ProcessIdentity[uuid.UUID] = ProcessIdentity()
    custom = ProcessIdentity(lambda: f"worker-{uuid.uuid4().hex[:8]}")
    before = (instance.value, custom.value)
    assert isinstance(instance.value, uuid.UUID) and instance.value == before[0]
    regenerate_identities(1)
    assert instance.value != before[0] and custom.value != before[1]
    assert custom.value.startswith("worker-")


def test_an_identity_read_after_a_restore_is_already_new(sysgenid_sim: SimulatedDevice) -> None:
    """No hook has run yet: the identity is renewed on its first read all the same."""
    identity: ProcessIdentity[uuid.UUID] = ProcessIdentity()
    before = identity.value
    sysgenid_sim.bump()
    assert identity.value != before


@pytest.mark.anyio
async def test_reopenable_closes_the_old_and_opens_a_new_one() -> None:
    opened: list[int] = []
    closed: list[int] = []

    async def open_pool() -> int:
        opened.append(len(opened) + 1)
        return opened[-1]

    pool = Reopenable(open_pool, closed.append)
    with pytest.raises(RuntimeError, match="start"):
        pool.current  # noqa: B018
    assert await pool.start() == 1 and pool.current == 1
    assert await pool.reopen(5) == 2
    assert closed == [1] and pool.current == 2 and pool.reopens == 1
    await pool.aclose()
    assert closed == [1, 2]


def test_install_default_hooks_is_idempotent() -> None:
    hooks = RestoreHooks()
    install_default_hooks(hooks)
    install_default_hooks(hooks)
    assert [(h.name, h.priority) for h in hooks.hooks] == [
        ("reseed_random", Phase.RESEED), ("reseed_numpy", Phase.RESEED), ("reseed_openssl", Phase.RESEED),
        ("regenerate_identities", Phase.IDENTITIES),
    ]
