"""The ``sysgenid_sim`` fixture, used the way a user's own test suite would (pytest-asyncio)."""

from __future__ import annotations

import asyncio
import random

import pytest

from sysgenid_async import watch
from sysgenid_async.testing import SimulatedDevice


class TokenService:
    """Stands in for user code: a token that must differ across clones."""

    def __init__(self) -> None:
        self.token = random.getrandbits(64)
        self.rotations = 0

    async def follow_restores(self) -> None:
        async with watch() as changes:  # the default device: the fixture's simulator
            async for _generation in changes:
                self.token = random.getrandbits(64)
                self.rotations += 1


@pytest.mark.asyncio
async def test_user_code_reacts_to_a_simulated_restore(sysgenid_sim: SimulatedDevice) -> None:
    service = TokenService()
    before = service.token
    task = asyncio.create_task(service.follow_restores())
    await asyncio.sleep(0.05)
    sysgenid_sim.bump()
    for _ in range(200):
        if service.rotations:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert service.rotations == 1 and service.token != before
    assert sysgenid_sim.open_files == 0, "cancelling the loop closed its watcher"


@pytest.mark.parametrize("sysgenid_sim_abi", ["v8"])
def test_the_abi_can_be_chosen(sysgenid_sim: SimulatedDevice) -> None:
    assert sysgenid_sim.abi.value == "v8"


def test_the_simulator_validates_its_inputs() -> None:
    with pytest.raises(ValueError, match="'v5' is not a valid Abi"):
        SimulatedDevice("v5")
    with pytest.raises(ValueError, match="'debian' is not a valid Flavour"):
        SimulatedDevice(flavour="debian")
    with pytest.raises(ValueError, match="the amazon-linux flavour speaks v8, not v4"):
        SimulatedDevice("v4", flavour="amazon-linux")
    assert SimulatedDevice(flavour="v4-patch").abi.value == "v4", "the flavour's ABI by default"


@pytest.mark.parametrize("sysgenid_sim_flavour", ["amazon-linux"])
def test_the_flavour_can_be_chosen(sysgenid_sim: SimulatedDevice) -> None:
    assert sysgenid_sim.abi.value == "v8" and sysgenid_sim.bump(2**31) == 1, "a signed minimum: ignored"
    sim = SimulatedDevice()
    with pytest.raises(ValueError, match="min_generation"):
        sim.bump(-1)
    with sim.installed("/dev/sysgenid-once", set_env=False), pytest.raises(ValueError, match="already installed"):
        SimulatedDevice().installed("/dev/sysgenid-once", set_env=False).__enter__()
