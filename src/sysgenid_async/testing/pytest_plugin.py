"""The pytest plugin: a simulated /dev/sysgenid per test.

    async def test_reseeds_after_restore(sysgenid_sim):
        ...                       # start the code under test; it opens the default device
        sysgenid_sim.bump()       # simulate a restore
        ...                       # assert that the code reacted

Override the ``sysgenid_sim_abi`` fixture (or parametrize it) to test against v8.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .isolation import isolated_state
from .simulator import SimulatedDevice


@pytest.fixture
def sysgenid_sim_abi() -> str:
    """The ABI the ``sysgenid_sim`` fixture speaks: ``"v4"`` unless overridden."""
    return "v4"


@pytest.fixture
def sysgenid_sim(sysgenid_sim_abi: str) -> Iterator[SimulatedDevice]:
    """A :class:`SimulatedDevice` installed at /dev/sysgenid and $SYSGENID_DEVICE for one test,
    with the library's process-wide state fresh (:func:`~sysgenid_async.testing.isolated_state`)."""
    device = SimulatedDevice(sysgenid_sim_abi)
    with isolated_state(), device.installed():
        yield device
