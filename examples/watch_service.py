"""A service that rebuilds its unique state on every restore.

    python examples/watch_service.py             # follows /dev/sysgenid (or $SYSGENID_DEVICE)
    python examples/watch_service.py --simulate  # on the simulator, with two restores

After a restore every clone holds the same ``random`` state and the same session
token; each change of generation reseeds and rotates them, then acknowledges.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
from collections.abc import Iterator

import anyio

from sysgenid_async import watch
from sysgenid_async.testing import SimulatedDevice


class Service:
    def __init__(self) -> None:
        self.session_token = secrets.token_hex(16)

    def rebuild(self, generation: int) -> None:
        random.seed(os.urandom(32))  # the kernel reseeds its RNG on a VM fork; Python's does not
        self.session_token = secrets.token_hex(16)
        print(f"generation {generation}: reseeded, new session token {self.session_token[:8]}...", flush=True)


async def serve(restores: int | None, simulator: SimulatedDevice | None) -> None:
    service = Service()
    async with watch() as changes:
        if simulator is not None:
            simulator.bump()
        async for generation in changes:
            service.rebuild(generation)  # acknowledged when this body finishes
            if restores is not None:
                restores -= 1
                if restores == 0:
                    break
            if simulator is not None:
                simulator.bump()


@contextlib.contextmanager
def maybe_simulated(simulate: bool) -> Iterator[SimulatedDevice | None]:
    if not simulate:
        yield None
        return
    simulator = SimulatedDevice()
    with simulator.installed():
        yield simulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--simulate", action="store_true", help="run on the simulator, with two restores")
    options = parser.parse_args()
    with maybe_simulated(options.simulate) as simulator:
        anyio.run(serve, 2 if options.simulate else None, simulator)


if __name__ == "__main__":
    main()
