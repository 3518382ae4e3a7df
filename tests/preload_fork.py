"""A pre-forking server's master, as ``gunicorn --preload`` runs one, for the fork tests.

    python preload_fork.py DEVICE WORKERS

The master reads a generation-bound value (so the library's probe exists), opens a
watcher of its own, then forks the workers, which wait on a pipe. Commands on stdin:
``close-master`` closes the master's watcher; ``go`` makes each worker read the bound
value and print ``child PID VALUE`` (or ``child-error PID ...``); ``quit`` ends them all.
"""

from __future__ import annotations

import os
import sys

from sysgenid_async.device import Device
from sysgenid_async.restore import generation_bound


@generation_bound
def secret() -> str:
    return os.urandom(8).hex()


def worker(commands: int, started: int) -> None:
    os.write(started, b"s")  # up: the library's at-fork handlers have run
    os.read(commands, 1)  # "go": after the restore
    try:
        line = f"child {os.getpid()} {secret()}\n"
    except Exception as exc:
        line = f"child-error {os.getpid()} {type(exc).__name__}: {exc}\n"
    os.write(1, line.encode())  # one write: the workers share the pipe
    os.read(commands, 1)  # "quit"


def main() -> None:
    path, count = sys.argv[1], int(sys.argv[2])
    os.environ["SYSGENID_DEVICE"] = path
    before = secret()
    master_watcher = Device.open(path)
    workers: list[tuple[int, int]] = []
    started_read, started_write = os.pipe()
    for _ in range(count):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(write_end)
            worker(read_end, started_write)
            os._exit(0)
        os.close(read_end)
        workers.append((pid, write_end))
    for _ in range(count):
        os.read(started_read, 1)
    print(f"ready {before} {' '.join(str(pid) for pid, _ in workers)}", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "close-master":
            master_watcher.close()
            print("closed", flush=True)
        elif command == "go":
            for _, pipe in workers:
                os.write(pipe, b"g")
        elif command == "quit":
            for pid, pipe in workers:
                os.write(pipe, b"q")
                os.close(pipe)
                os.waitpid(pid, 0)
            print("done", flush=True)
            return


if __name__ == "__main__":
    main()
