"""The watchdog on trio: the same library, another event loop.

    python examples/trio_watchdog.py --simulate
"""

from __future__ import annotations

import uuid

import trio
from _restores import Restore, run_with_restores

from sysgenid_async import watch


async def serve(restore: Restore | None) -> None:
    instance_id = uuid.uuid4()
    async with watch() as changes:
        if restore is not None:
            restore()
        async for generation in changes:
            old, instance_id = instance_id, uuid.uuid4()
            print(f"trio: generation {generation}: instance {old} is now {instance_id}", flush=True)
            if restore is not None:
                break


def main() -> None:
    run_with_restores(__doc__, lambda restore: trio.run(serve, restore))


if __name__ == "__main__":
    main()
