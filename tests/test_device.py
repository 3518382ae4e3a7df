"""The thin device layer: opening, ABI detection, the syscalls and their typed errors."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends import Backend, start_low
from sysgenid_async import (
    Abi,
    BlockingSysGenID,
    DeviceClosedError,
    DeviceNotFoundError,
    DevicePermissionError,
    StaleGenerationError,
    SysGenIDError,
    UnsupportedByAbiError,
    WaitResult,
)
from sysgenid_async.device import Device
from sysgenid_async.errors import AbiMismatchError, ForkedHandleError, NotASysGenIDDeviceError
from sysgenid_async.rawfile import KernelFile, install_opener, remove_opener
from sysgenid_async.testing import Quirk


@pytest.fixture
def device(backend: Backend) -> Iterator[BlockingSysGenID]:
    with BlockingSysGenID.open(backend.path) as opened:
        yield opened


def test_open_detects_the_abi(backend: Backend, device: Device) -> None:
    assert device.abi is backend.abi
    assert device.path == backend.path
    assert device.watcher
    assert device.generation == backend.generation
    assert device.fileno() >= 0


def test_the_environment_names_the_default_device(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSGENID_DEVICE", backend.path)
    with Device.open() as opened:
        assert opened.path == backend.path
    monkeypatch.setenv("SYSGENID_DEVICE", "/nonexistent/sysgenid")
    with Device.open(backend.path) as opened:  # an argument wins over the environment
        assert opened.path == backend.path


def test_a_forced_abi_is_checked(backend: Backend) -> None:
    with Device.open(backend.path, abi=backend.abi) as opened:
        assert opened.abi is backend.abi
    other = Abi.V8 if backend.abi is Abi.V4 else Abi.V4
    with pytest.raises(AbiMismatchError, match=f"abi {other.value} was asked for"):
        Device.open(backend.path, abi=other)
    with pytest.raises(ValueError, match="abi must be"):
        Device.open(backend.path, abi="v5")  # type: ignore[arg-type]


def test_read_and_ack(backend: Backend, device: Device) -> None:
    assert device.read_nowait() is None
    assert not device.is_outdated()
    new = backend.bump()
    assert device.is_outdated()
    assert device.read_nowait() == new
    device.ack(new)
    assert device.read_nowait() is None


def test_a_stale_ack_says_so(backend: Backend, device: Device) -> None:
    old = backend.bump()
    new = backend.bump()
    with pytest.raises(StaleGenerationError, match=f"cannot acknowledge generation {old}.*moved on to {new}") as caught:
        device.ack(old)
    assert (caught.value.acked, caught.value.current) == (old, new)
    assert isinstance(caught.value, ValueError)
    assert device.read_nowait() == new


@pytest.mark.parametrize(
    ("value", "error"),
    [(-1, ValueError), (2**32, ValueError), ("1", TypeError), (True, TypeError), (1.0, TypeError), (None, TypeError)],
)
def test_bad_generations_are_rejected_before_any_syscall(
    backend: Backend, device: Device, value: object, error: type[Exception]
) -> None:
    new = backend.bump()
    with pytest.raises(error):
        device.ack(value)  # type: ignore[arg-type]
    with pytest.raises(error):
        device.trigger(value)  # type: ignore[arg-type]
    assert backend.generation == new, "nothing changed"
    assert device.read_nowait() == new


@pytest.mark.breaks_on(Quirk.SIGNED_COUNTER)
def test_trigger_reports_what_the_device_says(backend: Backend, device: Device) -> None:
    start_low(backend)
    start = backend.generation
    assert device.trigger() == (start + 1) % 2**32
    # 2**31 and above do not fit a C int: the ioctl must still carry them
    assert device.trigger(2**31 + 5) == 2**31 + 5
    assert device.trigger(2**32 - 1) == 2**32 - 1
    assert device.trigger() == 0


def test_trigger_without_the_capability(backend: Backend) -> None:
    before = backend.generation
    done = backend.run_unprivileged(["trigger"])
    assert done.returncode == 5, done.stderr
    assert "CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, "one line, no traceback"
    assert backend.generation == before


def test_outdated_watchers_by_abi(backend: Backend, device: Device) -> None:
    if backend.abi is Abi.V4:
        assert device.outdated_watchers() == 0
        backend.bump()
        assert device.outdated_watchers() == 1
        with pytest.raises(UnsupportedByAbiError, match="v8 operation"):
            device.set_tracking(False)
    else:
        with pytest.raises(UnsupportedByAbiError, match="not supported by the v8 ABI"):
            device.outdated_watchers()


@pytest.mark.only_abi("v8")
def test_v8_tracking_follows_the_watcher_flag(backend: Backend) -> None:
    with Device.open(backend.path, watcher=False) as probe, Device.open(backend.path) as acking:
        assert not probe.watcher and acking.watcher
        new = backend.bump()
        with BlockingSysGenID.open(backend.path, watcher=False) as orchestrator:
            assert orchestrator.wait_watchers(0.05) is WaitResult.TIMED_OUT, "the acking handle is tracked"
            acking.ack(new)
            assert orchestrator.wait_watchers(0.05) is WaitResult.CAUGHT_UP, "the probe is not tracked"
        with pytest.raises(TypeError):
            probe.set_tracking(1)  # type: ignore[arg-type]


def test_wait_watchers_outcomes(backend: Backend, device: BlockingSysGenID) -> None:
    with Device.open(backend.path) as other:
        assert device.wait_watchers(0) is WaitResult.CAUGHT_UP
        new = backend.bump()
        # outdated caller, no timeout: on a path that retried EINTR (Python 3.14's
        # fcntl.ioctl) this would never return, so it runs where a hang is caught
        results: list[WaitResult] = []
        waiter = threading.Thread(target=lambda: results.append(device.wait_watchers(None)), daemon=True)
        waiter.start()
        waiter.join(60)
        assert not waiter.is_alive(), "WAIT_WATCHERS went through a call that retries EINTR"
        assert results == [WaitResult.CALLER_OUTDATED]
        device.ack(new)
        assert device.wait_watchers(0.05) is WaitResult.TIMED_OUT
        other.ack(new)
        assert device.wait_watchers(5) is WaitResult.CAUGHT_UP


@pytest.mark.kernel_only
@pytest.mark.once_per_abi
def test_the_fcntl_trap_is_real_on_this_python(backend: Backend) -> None:
    """Why the library's ioctls go through ctypes: from Python 3.14 on, fcntl.ioctl retries
    the EINTR that WAIT_WATCHERS returns to an outdated caller, so the call never returns."""
    script = textwrap.dedent(f"""
        import fcntl, os
        fd = os.open({backend.path!r}, os.O_RDWR)
        fcntl.ioctl(fd, {backend.abi.trigger_request}, 0)  # this file is now outdated
        try:
            fcntl.ioctl(fd, {backend.abi.wait_watchers_request}, 0)
        except InterruptedError:
            print("EINTR")
    """)
    try:
        done = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        outcome = "retried without end"
    else:
        assert done.returncode == 0, done.stderr
        outcome = done.stdout.strip()
    assert outcome == ("retried without end" if sys.version_info >= (3, 14) else "EINTR")


@pytest.mark.parametrize(("timeout", "error"), [(-1, ValueError), (float("nan"), ValueError), ("1", TypeError)])
def test_bad_timeouts(device: BlockingSysGenID, timeout: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        device.wait_watchers(timeout)  # type: ignore[arg-type]


def test_close_is_idempotent_and_final(backend: Backend) -> None:
    device = BlockingSysGenID.open(backend.path)
    device.close()
    device.close()
    assert device.closed and device.fileno() == -1
    assert "closed" in repr(device)
    for operation in (device.read_nowait, lambda: device.ack(0), lambda: device.generation, device.trigger,
                      device.is_outdated, lambda: device.wait_watchers(0)):
        with pytest.raises(DeviceClosedError):
            operation()


def test_a_forked_child_cannot_ack_for_its_parent(backend: Backend, device: Device) -> None:
    new = backend.bump()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: we exec nothing
        pid = os.fork()
    if pid == 0:
        status = 1
        try:
            device.ack(new)
        except ForkedHandleError:
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's ack was not refused"
    assert device.read_nowait() == new, "the parent is still outdated"
    device.ack(new)


# -- paths that are not the device (host only: nothing here touches a device) -----------


def test_a_missing_device_names_the_path_and_the_remedies() -> None:
    with pytest.raises(DeviceNotFoundError) as caught:
        Device.open("/nonexistent/sysgenid")
    message = str(caught.value)
    assert "/nonexistent/sysgenid" in message and "SYSGENID_DEVICE" in message and "insmod" in message
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, SysGenIDError)
    assert caught.value.errno == errno.ENOENT


@pytest.mark.parametrize("abi", ["auto", "v4", "v8"])
def test_paths_that_are_not_a_sysgenid_device(tmp_path: Path, abi: str) -> None:
    regular = tmp_path / "file"
    regular.write_bytes(b"\0" * 8)
    for path in (str(regular), "/dev/null", str(tmp_path)):
        fds_before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(NotASysGenIDDeviceError, match="not a sysgenid device"):
            Device.open(path, abi=abi)  # type: ignore[arg-type]
        assert len(os.listdir("/proc/self/fd")) == fds_before, f"{path}: an fd leaked"


def test_permission_denied_on_open_names_the_permission() -> None:
    def deny(**_: bool) -> KernelFile:
        raise PermissionError(errno.EACCES, "Permission denied")

    install_opener("/dev/sysgenid-denied", deny)
    try:
        with pytest.raises(DevicePermissionError, match="read and write access") as caught:
            Device.open("/dev/sysgenid-denied")
        assert isinstance(caught.value, PermissionError)
    finally:
        remove_opener("/dev/sysgenid-denied", deny)


def test_bad_path_types() -> None:
    with pytest.raises(TypeError, match="device path"):
        Device.open(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="watcher"):
        Device.open("/dev/null", watcher="yes")  # type: ignore[arg-type]


def test_ioctl_does_not_go_through_fcntl(monkeypatch: pytest.MonkeyPatch) -> None:
    """fcntl.ioctl retries EINTR on 3.14 and cannot pass 2**31 and above."""

    def refuse(*_: object) -> None:
        raise AssertionError("fcntl.ioctl was used")

    monkeypatch.setattr(fcntl, "ioctl", refuse)
    raw = KernelFile.open("/dev/null")
    try:
        with pytest.raises(OSError) as caught:  # noqa: PT011 - the errno is what is checked
            raw.ioctl(0x2D03, 2**32 - 1)
        assert caught.value.errno == errno.ENOTTY
    finally:
        raw.close()


def test_a_probe_only_handle_cannot_acknowledge_or_be_tracked(backend: Backend) -> None:
    from sysgenid_async.errors import ReadOnlyHandleError

    with Device.open(backend.path, watcher=False) as probe:
        assert probe.readonly
        assert probe.watcher is (backend.abi is Abi.V4), "on v4 every open file is a watcher"
        backend.bump()
        with pytest.raises(ReadOnlyHandleError, match="opened for probing only"):
            probe.ack(probe.generation)
        if backend.abi is Abi.V8:
            with pytest.raises(ReadOnlyHandleError, match="must not be tracked"):
                probe.set_tracking(True)
            probe.set_tracking(False)  # harmless: it stays untracked
            assert not probe.watcher
        assert probe.is_outdated(), "nothing was acknowledged"
