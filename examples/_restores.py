"""Where the examples' restores come from: real ones, forced ones, or the simulator.

    --simulate [--abi v4|v8]   an in-process simulated device; the example makes its own restores
    --trigger                  the real device; the example forces restores (needs CAP_CHECKPOINT_RESTORE)
    (neither)                  the real device; wait for real restores, for ever
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator

from sysgenid_async.device import Device
from sysgenid_async.testing import SimulatedDevice

Restore = Callable[[], int]


def parser(description: str | None) -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(description=description)
    mode = result.add_mutually_exclusive_group()
    mode.add_argument("--simulate", action="store_true", help="run on the simulator, with simulated restores")
    mode.add_argument("--trigger", action="store_true", help="force restores on the real device (privileged)")
    result.add_argument("--abi", choices=["v4", "v8"], default="v4", help="the simulator's ABI")
    return result


def _force_restore() -> int:
    # A short-lived probe: on v4 a file left open would count as a watcher.
    with Device.open(watcher=False) as device:
        return device.trigger()


def run_with_restores(description: str | None, run: Callable[[Restore | None], object]) -> None:
    """Parse the example's options and call ``run(restore)``, with restores from where they say."""
    options = parser(description).parse_args()
    with restores(options) as restore:
        run(restore)


@contextlib.contextmanager
def restores(options: argparse.Namespace) -> Iterator[Restore | None]:
    """Yield a function that makes a restore happen, or None for real restores only."""
    if options.simulate:
        simulator = SimulatedDevice(options.abi)
        with simulator.installed():
            yield simulator.bump
    elif options.trigger:
        yield _force_restore
    else:
        yield None
