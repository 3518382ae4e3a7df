"""The blocking twin in a plain thread, for code without an event loop.

    python examples/blocking_thread.py --simulate
"""

from __future__ import annotations

import argparse
import threading

from sysgenid_async import watch_blocking
from sysgenid_async.testing import SimulatedDevice


def follow(stop_after: int | None) -> None:
    with watch_blocking() as changes:
        for count, generation in enumerate(changes, start=1):
            print(f"thread: generation {generation}", flush=True)
            if stop_after is not None and count >= stop_after:
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--simulate", action="store_true")
    options = parser.parse_args()
    if not options.simulate:
        follow(None)
        return
    simulator = SimulatedDevice()
    with simulator.installed():
        watcher = threading.Thread(target=follow, args=(1,))
        watcher.start()
        while watcher.is_alive():
            simulator.bump()
            watcher.join(0.05)


if __name__ == "__main__":
    main()
