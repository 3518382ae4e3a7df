"""A fuzz pass over the kernel module's entry points, from userspace (guest only).

For a bounded time, random calls on a handful of open files: read and write with random
sizes and bytes, ioctl with random command numbers (our magics and others, every
direction and size) and random arguments, mmap with random lengths, offsets, protections
and flags, poll, dup, close and reopen. Raw syscalls through libc, so no wrapper filters
or retries anything; an interval timer interrupts any call that blocks (a wait for
watchers, a blocking read). The module must neither crash nor warn: the kernel log
gains no trouble line. The counts go to the report.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import os
import random
import re
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from backends import Backend

pytestmark = pytest.mark.kernel_only

SECONDS = 10.0  # per backend, under emulation
TROUBLE = re.compile(r"Oops|BUG:|WARNING:|general protection|Call Trace:|UBSAN:|KASAN:|refcount_t:")
MAP_FAILED = ctypes.c_void_p(-1).value

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
libc.read.restype = ctypes.c_ssize_t
libc.write.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
libc.write.restype = ctypes.c_ssize_t
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]


def kernel_log() -> list[str]:
    return subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout.splitlines()


@pytest.fixture
def interrupting_timer() -> Iterator[None]:
    """SIGALRM every 20 ms, handled (no exception): a blocked syscall returns EINTR."""
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: None)
    signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)


def random_ioctl_command(rng: random.Random) -> int:
    magic = rng.choice([0x2D, 0xE4, 0x2D, 0xE4, rng.randrange(256)])
    number = rng.choice([0, 1, 2, 3, 4, rng.randrange(256)])
    direction = rng.randrange(4)
    size = rng.choice([0, 0, 4, 8, rng.randrange(1 << 14)])
    return (direction << 30) | (size << 16) | (magic << 8) | number


def random_argument(rng: random.Random) -> int:
    return rng.choice([0, 1, 2, rng.randrange(1 << 32), (1 << 32) - 1, (1 << 64) - 1, rng.randrange(1 << 64), 100])


def test_random_calls_leave_the_kernel_log_clean(
    backend: Backend, interrupting_timer: None, report_figures: Callable[[dict[str, object]], None],
) -> None:
    seed = int(os.environ.get("SYSGENID_FUZZ_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    before = len(kernel_log())
    buffer = ctypes.create_string_buffer(1 << 16)
    files: list[int] = []
    maps: list[tuple[int, int]] = []
    calls: collections.Counter[str] = collections.Counter()
    outcomes: collections.Counter[str] = collections.Counter()

    def note(call: str, result: int) -> None:
        calls[call] += 1
        outcomes[errno.errorcode.get(ctypes.get_errno(), "?") if result == -1 else "ok"] += 1

    def open_one() -> None:
        flags = rng.choice([os.O_RDWR, os.O_RDONLY, os.O_WRONLY]) | rng.choice([0, os.O_NONBLOCK]) | os.O_CLOEXEC
        try:
            files.append(os.open(backend.path, flags))
            note("open", 0)
        except OSError:
            note("open", -1)

    deadline = time.monotonic() + SECONDS
    try:
        for _ in range(3):
            open_one()
        while time.monotonic() < deadline:
            if not files:
                open_one()
                continue
            fd = rng.choice(files)
            action = rng.randrange(10)
            ctypes.set_errno(0)
            if action == 0:
                size = rng.choice([0, 1, 3, 4, 5, 8, 4096, 65536, rng.randrange(65537)])
                note("read", libc.read(fd, buffer, size))
            elif action == 1:
                size = rng.choice([0, 1, 3, 4, 5, 8, rng.randrange(4096)])
                ctypes.memmove(buffer, rng.randbytes(size), size)
                note("write", libc.write(fd, buffer, size))
            elif action in (2, 3, 4):
                note("ioctl", libc.ioctl(fd, random_ioctl_command(rng), random_argument(rng)))
            elif action == 5:
                length = rng.choice([0, 1, 4096, 4097, 8192, 1 << 20, rng.randrange(1, 1 << 16)])
                offset = rng.choice([0, 0, 4096, rng.randrange(1 << 20) & ~4095])
                prot = rng.choice([1, 1, 3, 2, 4, 0, 7])  # PROT_READ, RW, WRITE, EXEC, NONE, RWX
                flags = rng.choice([1, 1, 2, 3])  # MAP_SHARED, MAP_PRIVATE, both bits
                address = libc.mmap(None, length, prot, flags, fd, offset)
                if address is None or address == MAP_FAILED:
                    note("mmap", -1)
                else:
                    note("mmap", 0)
                    if prot & 1:
                        ctypes.string_at(address, 4)  # touch the page: it must be there
                    maps.append((address, length))
            elif action == 6 and maps:
                address, length = maps.pop(rng.randrange(len(maps)))
                note("munmap", libc.munmap(address, length))
            elif action == 7:
                poller = select.poll()
                poller.register(fd, rng.choice([select.POLLIN, select.POLLOUT, select.POLLIN | select.POLLPRI]))
                poller.poll(0)
                note("poll", 0)
            elif action == 8 and len(files) < 12:
                files.append(os.dup(fd))
                note("dup", 0)
            else:
                files.remove(fd)
                os.close(fd)
                note("close", 0)
    finally:
        for address, length in maps:
            libc.munmap(address, length)
        for fd in files:
            os.close(fd)
    trouble = [line for line in kernel_log()[before:] if TROUBLE.search(line)]
    assert not trouble, f"seed {seed}: the kernel log shows trouble:\n" + "\n".join(trouble)
    assert backend.open_files() == 0
    total = sum(calls.values())
    report_figures({"backend": backend.name, "seed": seed, "seconds": SECONDS, "calls": total,
                    "by_call": dict(calls), "outcomes": dict(outcomes)})
    assert total > 1000, "the pass made too few calls to mean anything"
