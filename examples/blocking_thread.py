"""The blocking twin in a plain thread, for code without an event loop.

    python examples/blocking_thread.py --simulate
"""

from __future__ import annotations

import threading

from _restores import parser, restores

from sysgenid_async import watch_blocking


def follow(changes: watch_blocking, stop_after: int | None) -> None:
    with changes:
        for count, generation in enumerate(changes, start=1):
            print(f"thread: generation {generation}", flush=True)  # acknowledged on the next turn
            if stop_after is not None and count >= stop_after:
                break


def main() -> None:
    options = parser(__doc__).parse_args()
    with restores(options) as restore:
        changes = watch_blocking()  # opened here: every change from now on is seen
        if restore is None:
            follow(changes, None)
            return
        watcher = threading.Thread(target=follow, args=(changes, 1))
        watcher.start()
        restore()
        watcher.join()


if __name__ == "__main__":
    main()
