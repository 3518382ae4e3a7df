"""Testing support: an in-process simulated device and a pytest fixture.

    from sysgenid_async.testing import SimulatedDevice

    sim = SimulatedDevice("v8")
    with sim.installed():          # opens of /dev/sysgenid (and $SYSGENID_DEVICE) reach the simulator
        ...
        sim.bump()                 # what a snapshot restore does

With pytest, the ``sysgenid_sim`` fixture does this for each test (the plugin is
registered automatically when the package is installed).
"""

from .simulator import TRIGGER_CAPABILITIES, SimulatedDevice, SimulatedFile

__all__ = ["TRIGGER_CAPABILITIES", "SimulatedDevice", "SimulatedFile"]
