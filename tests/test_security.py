"""Security properties, on the device itself.

Who may trigger is tested in test_conformance (``test_trigger_needs_a_capability``: as
nobody, refused; as nobody with only CAP_CHECKPOINT_RESTORE, or only CAP_SYS_ADMIN,
allowed), mapping requests that are too big, offset or writable in ``test_mapping_errors``,
and ``--exec`` without a shell in test_cli. Here: the page cannot be made writable after
the fact, a store to it kills the storing process, and no descriptor of the library
reaches a child process.
"""

from __future__ import annotations

import ctypes
import mmap
import signal
import subprocess
import sys
import textwrap

import pytest

from backends import Backend
from sysgenid_async import AsyncSysGenID, BlockingSysGenID, watch
from sysgenid_async.device import Device
from sysgenid_async.testing import Quirk

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


@pytest.mark.kernel_only
@pytest.mark.parametrize("flags", [
    pytest.param(mmap.MAP_SHARED, id="shared"),
    # where private mappings are refused, test_a_private_mapping says so
    pytest.param(mmap.MAP_PRIVATE, id="private", marks=pytest.mark.with_quirk(Quirk.PRIVATE_MAPPING)),
])
def test_the_page_cannot_be_made_writable(backend: Backend, flags: int) -> None:
    # a file open for writing: the driver itself, not the file's mode, must refuse
    with Device.open(backend.path) as device:
        address = libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ, flags, device.fileno(), 0)
        assert address not in (None, ctypes.c_void_p(-1).value)
        try:
            assert libc.mprotect(address, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE) == -1
            assert ctypes.get_errno() == 13, "EACCES: the mapping may never become writable"
        finally:
            libc.munmap(address, mmap.PAGESIZE)


STORE_TO_THE_PAGE = textwrap.dedent("""
    import ctypes, mmap, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    fd = os.open(sys.argv[1], os.O_RDWR)
    address = libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    print("mapped", flush=True)
    ctypes.c_uint32.from_address(address).value = 12345
    print("stored", flush=True)
""")


@pytest.mark.kernel_only
def test_a_store_to_the_page_kills_the_storer_and_changes_nothing(backend: Backend) -> None:
    before = backend.generation
    done = subprocess.run([sys.executable, "-c", STORE_TO_THE_PAGE, backend.path],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == -signal.SIGSEGV
    assert done.stdout.split() == ["mapped"]
    assert backend.generation == before


LIST_FDS = "import os; print(' '.join(sorted(os.listdir('/proc/self/fd'))))"


def test_no_descriptor_reaches_a_child_process(backend: Backend) -> None:
    """Every fd the library opens is close-on-exec, even when the child keeps the others."""
    with Device.open(backend.path) as device, BlockingSysGenID.open(backend.path) as blocking:
        handle = AsyncSysGenID.open(backend.path)
        changes = watch(backend.path)
        try:
            blocking.device.wait_readable(0)  # a thread's wait makes the wake-up eventfd
            ours = {device.fileno(), blocking.fileno(), blocking.device._thread_wakeup, handle.fileno(),
                    changes.handle.fileno()}
            ours.discard(-1)
            assert ours, "the handles have descriptors"
            done = subprocess.run([sys.executable, "-c", LIST_FDS], capture_output=True, text=True,
                                  close_fds=False, check=True, timeout=60)
            inherited = {int(fd) for fd in done.stdout.split()}
            assert not ours & inherited, f"inherited: {sorted(ours & inherited)}"
        finally:
            changes.close()
            handle.close()
