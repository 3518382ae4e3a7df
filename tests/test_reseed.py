"""The ready-made hooks: what a clone shares, each reseeded or renewed."""

from __future__ import annotations

import random
import uuid

import numpy
import pytest

from sysgenid_async.restore import Phase, RestoreHooks
from sysgenid_async.restore.reseed import (
    ProcessIdentity,
    Reopenable,
    install_default_hooks,
    regenerate_identities,
    register_random,
    reseed_numpy,
    reseed_random,
)
from sysgenid_async.testing import SimulatedDevice


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
        register_random(42)  # type: ignore[arg-type]


def test_reseed_numpy() -> None:
    state = numpy.random.get_state()
    without = numpy.random.randint(0, 2**62)
    numpy.random.set_state(state)
    reseed_numpy(1)
    assert numpy.random.randint(0, 2**62) != without


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
        ("reseed_random", Phase.RESEED), ("reseed_numpy", Phase.RESEED), ("regenerate_identities", Phase.IDENTITIES),
    ]
