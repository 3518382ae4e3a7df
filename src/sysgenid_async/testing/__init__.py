"""Testing support: an in-process simulated device and a pytest fixture.

    from sysgenid_async.testing import SimulatedDevice

    sim = SimulatedDevice("v8")
    with sim.installed():          # opens of /dev/sysgenid (and $SYSGENID_DEVICE) reach the simulator
        ...
        sim.bump()                 # what a snapshot restore does

``SimulatedDevice(flavour="amazon-linux")`` behaves like Amazon Linux's v8 driver, and
``flavour="v4-patch"`` like the v4 patch (see :class:`Flavour` and docs/drivers.md).

With pytest, the ``sysgenid_sim`` fixture does this for each test, inside
:func:`isolated_state` (fresh hook registry, restore gate, probe and identity registries);
the plugin is registered automatically when the package is installed. The simulator lives
in one process: a child process that opens it gets
:class:`~sysgenid_async.errors.SimulatorProcessError`.
"""

from .isolation import isolated_state
from .simulator import TRIGGER_CAPABILITIES, Flavour, Quirk, SimulatedDevice, SimulatedFile

__all__ = ["TRIGGER_CAPABILITIES", "Flavour", "Quirk", "SimulatedDevice", "SimulatedFile", "isolated_state"]
