"""A watchdog service: on every restore, rebuild what must be unique, then acknowledge.

    python examples/watchdog.py                 # follow real restores on /dev/sysgenid
    python examples/watchdog.py --simulate      # two simulated restores, then exit
    python examples/watchdog.py --trigger       # two forced restores on the real device

Clones restored from one snapshot share Python's ``random`` state and every token the
process made before the snapshot. Each change of generation reseeds and rotates them.
"""

from __future__ import annotations

import os
import random
import secrets

import anyio
from _restores import Restore, run_with_restores

from sysgenid_async import watch


class Service:
    def __init__(self) -> None:
        self.session_token = secrets.token_hex(16)

    def rebuild(self, generation: int) -> None:
        random.seed(os.urandom(32))  # the kernel reseeds its RNG on a VM fork; Python's does not
        self.session_token = secrets.token_hex(16)
        print(f"generation {generation}: reseeded, new session token {self.session_token[:8]}...", flush=True)


async def serve(restore: Restore | None, restores_to_handle: int | None) -> None:
    service = Service()
    async with watch() as changes:
        if restore is not None:
            restore()
        async for generation in changes:
            service.rebuild(generation)  # acknowledged once this body finishes
            if restores_to_handle is not None:
                restores_to_handle -= 1
                if restores_to_handle == 0:
                    break
            if restore is not None:
                restore()


def main() -> None:
    run_with_restores(__doc__, lambda restore: anyio.run(serve, restore, None if restore is None else 2))


if __name__ == "__main__":
    main()
