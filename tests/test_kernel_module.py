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
from sysgenid_async.device import Device

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
    name = load_module(request.config.getoption("--kernel-module"), backend.spec, abi_param=abi_param)
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
        load_module(module, backend.spec, abi_param=True)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (["flavour=debian"], "flavour=debian is not sysgenid-async, amazon-linux or v4-patch"),
        (["flavour=amazon-linux", "abi=4"], "flavour=amazon-linux speaks abi 8, not 4"),
        (["flavour=v4-patch", "abi=8"], "flavour=v4-patch speaks abi 4, not 8"),
    ],
)
@pytest.mark.needs_abi_param
def test_a_flavour_that_does_not_fit_is_refused(
    backend: Backend, request: pytest.FixtureRequest, parameters: list[str], message: str
) -> None:
    assert isinstance(backend, KernelBackend)
    module = request.config.getoption("--kernel-module")
    assert rmmod(backend.module_name).returncode == 0
    try:
        refused = subprocess.run(["insmod", module, *parameters], capture_output=True, text=True, check=False)
        assert refused.returncode != 0 and "Invalid parameters" in refused.stderr
        assert not Path(backend.path).exists()
        log = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
        assert f"sysgenid: {message}" in log
    finally:
        load_module(module, backend.spec, abi_param=True)


def test_the_flavour_and_abi_are_readable(backend: Backend) -> None:
    assert isinstance(backend, KernelBackend)
    if backend.spec.foreign:
        pytest.skip("not this project's module: it has no flavour parameter")
    parameters = Path(f"/sys/module/{backend.module_name}/parameters")
    assert backend.spec.flavour is not None
    assert (parameters / "flavour").read_text().strip() == backend.spec.flavour.value
    if (parameters / "abi").exists():  # not in a build with one ABI
        assert (parameters / "abi").read_text().strip() == backend.abi.value[1:]


def test_the_backend_is_a_read_only_attribute_of_the_device(backend: Backend) -> None:
    assert isinstance(backend, KernelBackend)
    if backend.spec.foreign:
        pytest.skip("not this project's module: it has no backend attribute")
    attribute = Path("/sys/class/misc/sysgenid/backend")
    assert attribute.read_text().strip() in {"vmgenid", "none", "disabled"}
    assert not Path(f"/sys/module/{backend.module_name}/parameters/backend").exists()
    with pytest.raises(PermissionError):  # no store method: refused at open, even for root
        attribute.open("w")


def _parameters(module: str) -> str:
    return subprocess.run(["modinfo", "-F", "parm", module], capture_output=True, text=True, check=True).stdout


def test_the_vm_generation_backend_says_what_it_is(backend: Backend, request: pytest.FixtureRequest) -> None:
    """On a kernel with CONFIG_VMGENID the module follows the hypervisor; else it says it cannot."""
    assert isinstance(backend, KernelBackend)
    module = request.config.getoption("--kernel-module")
    if "vmfork:" not in _parameters(module):
        pytest.skip("not this project's module: it has no backend parameter")
    # random.c defines the vmfork notifier chain only with CONFIG_VMGENID (whatever the
    # kernel's release, and without its config file in the guest's root)
    symbols = Path("/proc/kallsyms").read_text()
    expected = "vmgenid" if " register_random_vmfork_notifier\n" in symbols else "none"
    reported = Path("/sys/class/misc/sysgenid/backend").read_text().strip()
    assert reported == expected
    log = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    message = "following the VM generation" if expected == "vmgenid" else "this kernel has no CONFIG_VMGENID"
    assert message in log


def test_the_backend_can_be_turned_off(backend: Backend, request: pytest.FixtureRequest) -> None:
    assert isinstance(backend, KernelBackend)
    module = request.config.getoption("--kernel-module")
    if "vmfork:" not in _parameters(module):
        pytest.skip("not this project's module: it has no vmfork parameter")
    abi_param = [] if request.config.getoption("--kernel-no-abi-param") else [f"abi={backend.abi.value[1:]}"]
    assert rmmod(backend.module_name).returncode == 0
    try:
        subprocess.run(["insmod", module, *abi_param, "vmfork=0"], check=True)
        parameters = Path(f"/sys/module/{backend.module_name}/parameters")
        assert Path("/sys/class/misc/sysgenid/backend").read_text().strip() == "disabled"
        assert (parameters / "vmfork").read_text().strip() == "N"
    finally:
        load_module(module, backend.spec, abi_param=not request.config.getoption("--kernel-no-abi-param"))
