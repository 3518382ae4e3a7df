"""Fork safety on the kernel device: a pre-forking server's workers get a working library,
and the master's files, inherited by every worker, are let go in the workers.

The simulator lives in one process and refuses a child (test_restore_safety.py), so this
runs in the guest only.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from backends import Backend
from sysgenid_async.device import Device

pytestmark = pytest.mark.kernel_only

WORKERS = 3


def holds_the_device(pid: int) -> bool:
    """Whether process ``pid`` has the device open or mapped."""
    fds = Path(f"/proc/{pid}/fd")
    opened = any(str(fd.readlink()).startswith("/dev/sysgenid") for fd in fds.iterdir() if fd.is_symlink())
    mapped = "sysgenid" in Path(f"/proc/{pid}/maps").read_text()
    return opened or mapped


def test_preloaded_workers_after_a_restore(backend: Backend) -> None:
    master = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("preload_fork.py")), backend.path, str(WORKERS)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert master.stdin is not None and master.stdout is not None

    def ask(command: str) -> None:
        assert master.stdin is not None
        master.stdin.write(command + "\n")
        master.stdin.flush()

    try:
        ready = master.stdout.readline().split()
        assert ready[0] == "ready", ready
        before, workers = ready[1], [int(pid) for pid in ready[2:]]
        for pid in [master.pid, *workers]:
            assert holds_the_device(pid) == (pid == master.pid), f"process {pid} (master {master.pid})"
        backend.bump()
        if backend.abi.value == "v4":
            with Device.open(backend.path, watcher=False) as probe:
                assert probe.outdated_watchers() == 1, "only the master's own watcher is behind"
        ask("close-master")
        assert master.stdout.readline().strip() == "closed"
        # The workers hold none of the master's files: closing it there let the file go. What
        # stays is the master's probe-only file on v8 (on v4 none is kept: it would be a watcher).
        assert backend.open_files() == (0 if backend.abi.value == "v4" else 1)
        if backend.abi.value == "v4":
            with Device.open(backend.path, watcher=False) as probe:
                assert probe.outdated_watchers() == 0, "an inherited copy kept the master's watcher alive"
        ask("go")
        answers = [master.stdout.readline().split() for _ in range(WORKERS)]
        assert all(answer[:1] == ["child"] for answer in answers), (answers, stderr_of(master))
        values = {answer[2] for answer in answers}
        assert before not in values and len(values) == WORKERS
        ask("quit")
        assert master.stdout.readline().strip() == "done"
    finally:
        master.stdin.close()
        master.wait(60)
        master.stdout.close()
        assert master.stderr is not None
        master.stderr.close()


def stderr_of(process: subprocess.Popen[str]) -> str:
    assert process.stdin is not None and process.stderr is not None
    process.stdin.close()
    process.wait(60)
    return process.stderr.read()
