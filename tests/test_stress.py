"""A trigger storm on the kernel device while 64 library watchers follow it (guest only).

100,000 forced changes, from 50,000 below where plain changes wrap (2**32, or 2**31 where
the driver computes in a signed int) so the counter wraps mid-storm, while
four processes of sixteen ``watch()`` loops read and acknowledge concurrently. At the end
every watcher has seen the final generation and acknowledged it, the device counts no
outdated watcher, and no watcher ever saw the generation go backwards (other than by the
wrap). The counts go to the test report.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from backends import Backend
from sysgenid_async import uapi
from sysgenid_async.testing import Quirk
from sysgenid_async.uapi import Abi

pytestmark = pytest.mark.kernel_only

HERE = Path(__file__).resolve().parent
BUMPS = 100_000
PROCESSES = 4
WATCHERS_PER_PROCESS = 16


def test_a_trigger_storm_loses_nothing(backend: Backend, report_figures: Callable[[dict[str, object]], None]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(backend.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    trigger = ctypes.c_ulong(backend.abi.trigger_request)
    # Plain changes wrap after 2**32 - 1, or after 2**31 - 1 where the driver computes in a signed int.
    modulus = 2**31 if Quirk.SIGNED_COUNTER in backend.quirks else 2**32
    start = modulus - 50_000
    # Near the top before the watchers open: what they see is the storm's steps of one.
    assert libc.ioctl(fd, trigger, ctypes.c_ulong(start)) == 0
    os.write(fd, os.read(fd, 4))
    workers = [
        subprocess.Popen([sys.executable, str(HERE / "stress_worker.py"), backend.path, str(WATCHERS_PER_PROCESS),
                          str(modulus)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(PROCESSES)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        started = time.monotonic()
        for _ in range(BUMPS):
            assert libc.ioctl(fd, trigger, ctypes.c_ulong(0)) == 0
        storm_seconds = time.monotonic() - started
        final = backend.generation
        assert final == (start + BUMPS) % modulus, "every trigger counted, wrapped once"
        os.write(fd, os.read(fd, 4))  # this file is outdated too, and an outdated caller cannot wait
        reports = []
        for worker in workers:
            assert worker.stdin is not None and worker.stdout is not None
            worker.stdin.write(f"{final}\n")
            worker.stdin.flush()
            reports.append(json.loads(worker.stdout.readline()))
        settle_seconds = time.monotonic() - started - storm_seconds
        # Every file is still open: none may be outdated.
        if backend.abi is Abi.V4:
            assert libc.ioctl(fd, ctypes.c_ulong(uapi.SYSGENID_GET_OUTDATED_WATCHERS), ctypes.c_ulong(0)) == 0
        assert libc.ioctl(fd, ctypes.c_ulong(backend.abi.wait_watchers_request), ctypes.c_ulong(1000)) == 0, (
            errno.errorcode.get(ctypes.get_errno())
        )
    finally:
        for worker in workers:
            if worker.stdin is not None and not worker.stdin.closed:
                worker.stdin.close()
        for worker in workers:
            worker.wait(120)
            if worker.stdout is not None:
                worker.stdout.close()
        os.close(fd)
    totals = {key: sum(report[key] for report in reports) for key in reports[0]}
    assert totals["watchers"] == PROCESSES * WATCHERS_PER_PROCESS == totals["caught_up"]
    assert totals["backwards"] == 0 and totals["repeated"] == 0
    assert all(worker.returncode == 0 for worker in workers)
    figures = {"bumps": BUMPS, "storm_seconds": round(storm_seconds, 2), "settle_seconds": round(settle_seconds, 2),
               "final_generation": final, **totals}
    report_figures({"backend": backend.name, **figures})
