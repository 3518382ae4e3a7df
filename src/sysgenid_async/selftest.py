"""A non-destructive conformance check of the live device, behind ``sysgenid-async selftest``.

It speaks to the device through raw syscalls, as a client would, and checks each
documented behaviour. It changes the generation only with ``allow_trigger=True``.

What the ABI requires is a *pass* or a *fail*. What a shipped driver does differently
but usably (docs/drivers.md: a signed counter, a root-only node, a trigger a user
namespace can make...) is a *warn*, with one line on what it means: a driver with
warnings is still usable, and the exit status stays 0.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import select
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator

from . import uapi
from .device import resolve_device_path
from .errors import Operation, map_os_errors
from .rawfile import RawFile, open_raw
from .uapi import Abi

__all__ = ["CheckResult", "run_selftest"]

_INT_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # "pass", "warn", "fail" or "skip"
    detail: str = ""


class _CheckFailedError(Exception):
    pass


class _QuirkError(Exception):
    """A usable departure from the documented ABI: reported as a warning."""


def _expect_errno(expected: int, action: Callable[[], object]) -> str:
    try:
        action()
    except OSError as exc:
        if exc.errno == expected:
            return errno.errorcode[expected]
        got = errno.errorcode.get(exc.errno or 0, exc.errno)
        raise _CheckFailedError(f"expected {errno.errorcode[expected]}, got {got}") from None
    raise _CheckFailedError(f"expected {errno.errorcode[expected]}, but it succeeded")


def _readable(raw: RawFile) -> bool:
    poller = select.poll()
    poller.register(raw.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _u32(value: int) -> bytes:
    return (value & uapi.GENERATION_MAX).to_bytes(4, sys.byteorder)


def run_selftest(path: str | None = None, *, allow_trigger: bool = False) -> list[CheckResult]:
    """Run every check against the device at ``path``; returns one result per check.

    A device that cannot be opened raises, as any open does: :class:`DeviceNotFoundError`,
    or :class:`DevicePermissionError` (whose message says how to grant access).
    """
    resolved = resolve_device_path(path)
    results: list[CheckResult] = []
    with map_os_errors(Operation.OPEN, resolved):
        raw = open_raw(resolved)
    try:
        results.extend(_run_checks(raw, resolved, allow_trigger))
    finally:
        raw.close()
    return results


def _check(name: str, body: Callable[[], str]) -> CheckResult:
    try:
        return CheckResult(name, "pass", body())
    except _QuirkError as exc:
        return CheckResult(name, "warn", str(exc))
    except (_CheckFailedError, OSError) as exc:
        return CheckResult(name, "fail", str(exc))


def _run_checks(raw: RawFile, path: str, allow_trigger: bool) -> Iterator[CheckResult]:
    yield CheckResult("open O_RDWR|O_NONBLOCK|O_CLOEXEC", "pass", path)
    yield _node_result(path)
    abi: Abi | None = None

    yield _check(
        "is a character device", lambda: "yes" if raw.is_character_device() else _fail("not a character device")
    )

    def detect() -> str:
        nonlocal abi
        try:
            raw.ioctl(uapi.SYSGENID_GET_OUTDATED_WATCHERS, 0)
            abi = Abi.V4
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                got = errno.errorcode.get(exc.errno or 0)
                raise _CheckFailedError(f"the v4 query gave {got}: not sysgenid") from None
            abi = Abi.V8
        return abi.value

    result = _check("ABI detected by the v4 query", detect)
    yield result
    if abi is None:
        return

    page = raw.map_page()
    words = page.cast("I")
    try:
        yield _check("mmap one page PROT_READ MAP_SHARED", lambda: f"generation {words[0]}")
        yield from _checks_for(raw, path, abi, words, allow_trigger)
    finally:
        words.release()
        page.release()


def _fail(message: str) -> str:
    raise _CheckFailedError(message)


def _checks_for(
    raw: RawFile,
    path: str,
    abi: Abi,
    words: memoryview,
    allow_trigger: bool,
) -> Iterator[CheckResult]:
    # A fresh open file starts up to date, unless another change raced the open.
    up_to_date = not _readable(raw)
    yield _check("a new file is up to date (not readable)", lambda: "yes" if up_to_date else _fail("readable at open"))
    if up_to_date:
        yield _check("read when up to date: EAGAIN", lambda: _expect_errno(errno.EAGAIN, lambda: raw.read(4)))
    yield _check("read of 3 bytes: EINVAL", lambda: _expect_errno(errno.EINVAL, lambda: raw.read(3)))
    yield _check("read of 0 bytes returns 0", lambda: "0 bytes" if raw.read(0) == b"" else _fail("data returned"))
    wrong_size = errno.ENOBUFS if abi is Abi.V8 else errno.EINVAL
    yield _check(
        f"write of 5 bytes: {errno.errorcode[wrong_size]}",
        lambda: _expect_errno(wrong_size, lambda: raw.write(b"\0" * 5)),
    )
    yield _check(
        "ack of a non-current generation: EINVAL",
        lambda: _expect_errno(errno.EINVAL, lambda: raw.write(_u32(words[0] + 1))),
    )
    yield _check("writable mmap: EPERM", lambda: _expect_errno(errno.EPERM, lambda: raw.map_page(writable=True)))
    yield _check(
        "mmap of two pages: EINVAL",
        lambda: _expect_errno(errno.EINVAL, lambda: raw.map_page(2 * uapi.PAGE_SIZE)),
    )
    yield _check(
        "mmap at a non-zero offset: EINVAL",
        lambda: _expect_errno(errno.EINVAL, lambda: raw.map_page(offset=uapi.PAGE_SIZE)),
    )
    yield _check("read-only MAP_PRIVATE mapping", lambda: _private_mapping(raw, words))
    magic = uapi.SYSGENID_IOCTL if abi is Abi.V4 else uapi.SYSGENID_V8_IOCTL
    yield _check(
        "unknown ioctl: EINVAL",
        lambda: _expect_errno(errno.EINVAL, lambda: raw.ioctl(uapi._IO(magic, 0x7F), 0)),
    )
    if abi is Abi.V4:
        yield _check(
            "GET_OUTDATED_WATCHERS answers", lambda: f"{raw.ioctl(uapi.SYSGENID_GET_OUTDATED_WATCHERS, 0)} outdated"
        )
    else:
        yield _check("SET_WATCHER_TRACKING(1) and (0)", lambda: _tracking_round_trip(raw))
        yield _check("SET_WATCHER_TRACKING(2)", lambda: _tracking_of_two(raw))
    yield _check("WAIT_WATCHERS(1 ms) returns", lambda: _wait_once(raw, abi))
    yield from _module_results(path)
    if not allow_trigger:
        for name in _TRIGGER_CHECKS:
            yield CheckResult(name, "skip", "needs --allow-trigger (changes the generation)")
        return
    round_trip = _check(_TRIGGER_CHECKS[0], lambda: _trigger_round_trip(raw, abi, words))
    yield round_trip
    if round_trip.status != "pass":
        for name in _TRIGGER_CHECKS[1:]:
            yield CheckResult(name, "skip", "the trigger round trip failed")
        return
    yield _check(_TRIGGER_CHECKS[1], lambda: _counter_width(raw, abi, words))
    yield _check(_TRIGGER_CHECKS[2], lambda: _minimum_width(raw, abi, words))
    yield _user_namespace_trigger(path, abi, words)


_TRIGGER_CHECKS = (
    "trigger, read, poll, caller-outdated wait, ack",
    "the counter is a u32 (after 2147483647 comes 2147483648)",
    "a minimum of 2**31 or more is honoured",
    "a trigger from an unprivileged user namespace is refused",
)


MODULE_PARAMETERS = "/sys/module/sysgenid/parameters"
MISC_DEVICE = "/sys/class/misc/sysgenid"
MISC_DEVICE_NUMBER = f"{MISC_DEVICE}/dev"

_FLAVOUR_MEANING = {
    "sysgenid-async": "the project's module",
    "amazon-linux": "the project's module, behaving as Amazon Linux's v8 driver",
    "v4-patch": "the project's module, behaving as the v4 patch",
}


def _module_parameter(name: str, directory: str = MODULE_PARAMETERS) -> str | None:
    try:
        with open(os.path.join(directory, name)) as parameter:
            return parameter.read().strip()
    except OSError:
        return None


def _is_the_modules_node(path: str) -> bool:
    """Whether ``path`` is the node of the loaded sysgenid module (not a simulator, not another node)."""
    try:
        with open(MISC_DEVICE_NUMBER) as number:
            major, minor = (int(part) for part in number.read().strip().split(":"))
        return os.stat(path).st_rdev == os.makedev(major, minor)
    except (OSError, ValueError):
        return False


def _module_results(path: str) -> Iterator[CheckResult]:
    """Which driver this is, and what drives the generation besides userspace, when it says (ours does)."""
    ours = _is_the_modules_node(path)
    flavour = _module_parameter("flavour") if ours else None
    if flavour is None:
        yield CheckResult("driver", "skip", "not the project's module (it does not say which it is)")
    else:
        yield CheckResult("driver", "pass", _FLAVOUR_MEANING.get(flavour, f"flavour {flavour}"))
    backend = _module_parameter("backend", MISC_DEVICE) if ours else None  # an attribute of the device
    if backend is None:
        yield CheckResult("VM generation backend", "skip", "the driver does not say")
        return
    meaning = {
        "vmgenid": "follows the hypervisor's VM generation",
        "none": "none: the kernel has no CONFIG_VMGENID; only triggers change the generation",
        "disabled": "disabled (vmfork=0); only triggers change the generation",
    }
    yield CheckResult("VM generation backend", "pass", meaning.get(backend, backend))


def _node_result(path: str) -> CheckResult:
    """Who may open the node: a root-only node is usable, but only by root without a udev rule."""
    name = "who may open the node"
    try:
        info = os.stat(path)
    except OSError as exc:
        return CheckResult(name, "skip", exc.strerror or str(exc))
    if not stat.S_ISCHR(info.st_mode):
        return CheckResult(name, "skip", "not a device node")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o066 == 0:
        return CheckResult(
            name, "warn",
            f"mode {mode:04o}, owner uid {info.st_uid}: services that are not root cannot open it; "
            "a udev rule can let a group probe and acknowledge (kernel/60-sysgenid.rules, docs/drivers.md)",
        )
    return CheckResult(name, "pass", f"mode {mode:04o}, uid {info.st_uid}, gid {info.st_gid}")


def _private_mapping(raw: RawFile, words: memoryview) -> str:
    try:
        page = raw.map_page(shared=False)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return "EINVAL (MAP_SHARED only)"
        raise
    try:
        if page.cast("I")[0] != words[0]:
            raise _CheckFailedError("the private mapping does not show the generation")
    finally:
        page.release()
    return "accepted, read-only (harmless: clients map MAP_SHARED)"


def _tracking_of_two(raw: RawFile) -> str:
    try:
        raw.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, 2)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return "EINVAL (only 0 and 1)"
        raise
    raw.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, 0)
    raise _QuirkError("accepted as on (Amazon Linux's driver takes any non-zero value); the library passes 0 or 1")


def _tracking_round_trip(raw: RawFile) -> str:
    raw.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, 1)
    raw.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, 0)
    return "ok"


def _wait_once(raw: RawFile, abi: Abi) -> str:
    try:
        raw.ioctl(abi.wait_watchers_request, 1)
    except OSError as exc:
        allowed = (errno.EINTR,) if abi is Abi.V4 else (errno.ETIME, errno.EINTR)
        if exc.errno is None or exc.errno not in allowed:
            raise
        return f"{errno.errorcode[exc.errno]} (other watchers outdated)"
    return "0 (no watcher outdated)"


def _trigger_and_ack(raw: RawFile, abi: Abi, words: memoryview, minimum: int) -> int:
    """Trigger; acknowledge what the device then says (this file must not hold others back)."""
    raw.ioctl(abi.trigger_request, minimum)
    value = int(words[0])
    raw.write(_u32(value))
    return value


def _counter_width(raw: RawFile, abi: Abi, words: memoryview) -> str:
    top = _trigger_and_ack(raw, abi, words, _INT_MAX)
    after = _trigger_and_ack(raw, abi, words, 0)
    if after > _INT_MAX or top > _INT_MAX:
        return f"{top} -> {after}"
    raise _QuirkError(
        f"a signed counter: {top} -> {after}. The counter can come back to a value it had; the library "
        "compares generations with != and sees every change"
    )


def _minimum_width(raw: RawFile, abi: Abi, words: memoryview) -> str:
    minimum = 2**31 + 16
    before = int(words[0])
    after = _trigger_and_ack(raw, abi, words, minimum)
    if after >= minimum:
        return f"trigger({minimum}): {before} -> {after}"
    raise _QuirkError(
        f"trigger({minimum}) gave {after}: the minimum is compared as a signed int, so 2**31 and more are "
        "ignored; the library reports the generation the device gives, never the minimum asked for"
    )


_UNSHARED_TRIGGER = textwrap.dedent("""
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CLOEXEC)
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        print("unshare", ctypes.get_errno())
    else:
        rc = libc.ioctl(fd, int(sys.argv[2]), 0)
        print("trigger", 0 if rc == 0 else ctypes.get_errno())
""")


def _user_namespace_trigger(path: str, abi: Abi, words: memoryview) -> CheckResult:
    """In its own user namespace a process holds every capability, but only there."""
    name = _TRIGGER_CHECKS[3]
    before = int(words[0])
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _UNSHARED_TRIGGER, path, str(abi.trigger_request)],
            capture_output=True, text=True, check=False, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return CheckResult(name, "skip", f"could not run the probe: {exc}")
    what, _, code = done.stdout.strip().partition(" ")
    if done.returncode != 0 or not code.isdigit():
        return CheckResult(name, "skip", f"the probe failed: {done.stderr.strip().splitlines()[-1:]}")
    if what == "unshare":
        return CheckResult(name, "skip", f"user namespaces are not available here ({errno.errorcode.get(int(code))})")
    if int(code) in (errno.EACCES, errno.EPERM):
        return CheckResult(name, "pass", "EACCES: the capability counts in the initial user namespace")
    if int(code) == 0:
        return CheckResult(
            name, "warn",
            f"accepted ({before} -> {words[0]}): the driver checks the capability in the caller's user "
            "namespace, so any user who can open the node and create a user namespace can fake a restore "
            "for the whole machine. Keep the node root-only or group-only (docs/drivers.md)",
        )
    return CheckResult(name, "fail", f"the trigger gave {errno.errorcode.get(int(code), code)}")


def _trigger_round_trip(raw: RawFile, abi: Abi, words: memoryview) -> str:
    before = words[0]
    try:
        raw.ioctl(abi.trigger_request, 0)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise _CheckFailedError("EACCES: triggering needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN") from None
        raise
    after = words[0]
    if after == before:
        raise _CheckFailedError("the mapped generation did not change")
    if not _readable(raw):
        raise _CheckFailedError("not readable after the change")
    value = int.from_bytes(raw.read(4), sys.byteorder)
    if value != words[0]:
        raise _CheckFailedError(f"read gave {value}, the page says {words[0]}")
    _expect_errno(errno.EINTR, lambda: raw.ioctl(abi.wait_watchers_request, 0))
    raw.write(_u32(value))
    if _readable(raw):
        raise _CheckFailedError("still readable after the ack")
    return f"{before} -> {value}"


def format_table(results: list[CheckResult]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{r.status.upper():4}  {r.name:{width}}  {r.detail}".rstrip() for r in results]
    counts = {status: sum(r.status == status for r in results) for status in ("pass", "warn", "skip", "fail")}
    summary = f"{counts['pass']} passed, {counts['warn']} warned, {counts['skip']} skipped, {counts['fail']} failed"
    if counts["fail"]:
        summary += ": the driver does not behave as documented"
    elif counts["warn"]:
        summary += ": usable; the warnings are a shipped driver's known quirks (docs/drivers.md)"
    lines.append(summary)
    return os.linesep.join(lines)
