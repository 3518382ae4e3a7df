"""The kernel module's own life cycle: load, unload, reload, and unload refused while in use.

These need the module itself, so they run in the guest only (deselected elsewhere).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import subprocess
from pathlib import Path

import pytest

from backends import Backend, KernelBackend, load_module
from sysgenid_async import Device

pytestmark = pytest.mark.kernel_only


def rmmod(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rmmod", name], capture_output=True, text=True, check=False)


def test_unload_is_refused_while_a_file_is_open(backend: Backend) -> None:
    assert isinstance(backend, KernelBackend)
    with Device.open(backend.path):
        refused = rmmod(backend.module_name)
        assert refused.returncode != 0 and "in use" in refused.stderr
        assert Path(f"/sys/module/{backend.module_name}").exists()


def test_unload_is_refused_while_the_page_is_mapped(backend: Backend) -> None:
    # C clients (AWS-LC) map the page, then close the fd: the mapping alone keeps the
    # file, so the module must stay. (Python's mmap keeps a dup of the fd: use libc.)
    assert isinstance(backend, KernelBackend)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    fd = os.open(backend.path, os.O_RDONLY | os.O_CLOEXEC)
    address = libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    os.close(fd)
    assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    try:
        assert ctypes.c_uint32.from_address(address).value == backend.generation
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        assert libc.mprotect(address, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE) == -1
        assert ctypes.get_errno() == errno.EACCES, "the mapping can never become writable"
        assert backend.open_files() == 1, "the mapping holds the file"
        assert rmmod(backend.module_name).returncode != 0
        new = backend.bump()
        assert ctypes.c_uint32.from_address(address).value == new
    finally:
        assert libc.munmap(address, mmap.PAGESIZE) == 0
    assert backend.open_files() == 0


def test_reload_starts_again_at_generation_zero(backend: Backend, request: pytest.FixtureRequest) -> None:
    assert isinstance(backend, KernelBackend)
    backend.bump()
    assert backend.generation != 0
    abi_param = not request.config.getoption("--kernel-no-abi-param")
    name = load_module(request.config.getoption("--kernel-module"), backend.abi, abi_param=abi_param)
    assert name == backend.module_name
    assert backend.generation == 0
    with Device.open(backend.path) as device:
        assert device.abi is backend.abi
        assert device.trigger() == 1
        device.ack(1)


@pytest.mark.needs_abi_param
def test_an_invalid_abi_parameter_is_refused(backend: Backend, request: pytest.FixtureRequest) -> None:
    assert isinstance(backend, KernelBackend)
    module = request.config.getoption("--kernel-module")
    assert rmmod(backend.module_name).returncode == 0
    try:
        refused = subprocess.run(["insmod", module, "abi=5"], capture_output=True, text=True, check=False)
        assert refused.returncode != 0 and "Invalid parameters" in refused.stderr
        assert not Path(backend.path).exists()
    finally:
        load_module(module, backend.abi, abi_param=True)


def test_the_in_kernel_bump_is_exported(backend: Backend) -> None:
    assert isinstance(backend, KernelBackend)
    symbols = Path("/proc/kallsyms").read_text().splitlines()
    assert any(line.endswith(f" sysgenid_bump_generation\t[{backend.module_name}]") for line in symbols)
