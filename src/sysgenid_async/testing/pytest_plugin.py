"""The pytest plugin: a simulated /dev/sysgenid per test.

    async def test_reseeds_after_restore(sysgenid_sim):
        ...                       # start the code under test; it opens the default device
        sysgenid_sim.bump()       # simulate a restore
        ...                       # assert that the code reacted

Override the ``sysgenid_sim_abi`` fixture (or parametrize it) to test against v8, and
``sysgenid_sim_flavour`` to test against a shipped driver's behaviour
(``"amazon-linux"``, ``"v4-patch"``; see docs/drivers.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .isolation import isolated_state
from .simulator import SimulatedDevice


@pytest.fixture
def sysgenid_sim_abi() -> str | None:
    """The ABI the ``sysgenid_sim`` fixture speaks: None (the flavour's, else ``"v4"``) unless overridden."""
    return None


@pytest.fixture
def sysgenid_sim_flavour() -> str:
    """Whose driver ``sysgenid_sim`` behaves like: ``"sysgenid-async"`` (the project's module) unless overridden."""
    return "sysgenid-async"


@pytest.fixture
def sysgenid_sim(sysgenid_sim_abi: str | None, sysgenid_sim_flavour: str) -> Iterator[SimulatedDevice]:
    """A :class:`SimulatedDevice` installed at /dev/sysgenid and $SYSGENID_DEVICE for one test,
    with the library's process-wide state fresh (:func:`~sysgenid_async.testing.isolated_state`)."""
    device = SimulatedDevice(sysgenid_sim_abi, flavour=sysgenid_sim_flavour)
    with isolated_state(), device.installed():
        yield device
