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
import functools
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
from .rawfile import RawFile, open_raw, opened_in_process
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


@dataclasses.dataclass(frozen=True)
class _Subject:
    """What every check looks at: the open file, its page, and what the first checks found."""

    raw: RawFile
    path: str
    abi: Abi
    words: memoryview
    #: The file was up to date when the checks began (no change raced the open).
    up_to_date: bool


class _SkippedError(Exception):
    """The check cannot run here; the message says why."""


@dataclasses.dataclass(frozen=True)
class _Check:
    name: str
    run: Callable[[_Subject], str]
    #: Only on this ABI (None: both); not listed at all on the other.
    abi: Abi | None = None
    #: Needs a file that started up to date.
    up_to_date: bool = False
    #: Changes the generation: only with allow_trigger, and only once the round trip passed.
    trigger: bool = False


def _check(name: str, body: Callable[[], str]) -> CheckResult:
    try:
        return CheckResult(name, "pass", body())
    except _QuirkError as exc:
        return CheckResult(name, "warn", str(exc))
    except _SkippedError as exc:
        return CheckResult(name, "skip", str(exc))
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
        # A fresh open file starts up to date, unless another change raced the open.
        subject = _Subject(raw, path, abi, words, up_to_date=not _readable(raw))
        yield from _run_table(subject, allow_trigger)
    finally:
        words.release()
        page.release()


def _run_table(subject: _Subject, allow_trigger: bool) -> Iterator[CheckResult]:
    round_trip_passed = False
    for check in _CHECKS:
        if check.abi is not None and check.abi is not subject.abi:
            continue
        if check.up_to_date and not subject.up_to_date:
            yield CheckResult(check.name, "skip", "the file was outdated at open (a change raced it)")
        elif check.trigger and not allow_trigger:
            yield CheckResult(check.name, "skip", "needs --allow-trigger (changes the generation)")
        elif check.trigger and check.run is not _trigger_round_trip and not round_trip_passed:
            yield CheckResult(check.name, "skip", "the trigger round trip failed")
        else:
            result = _check(check.name, functools.partial(check.run, subject))
            if check.run is _trigger_round_trip:
                round_trip_passed = result.status == "pass"
            yield result


def _fail(message: str) -> str:
    raise _CheckFailedError(message)


def _expect(expected: int, action: Callable[[RawFile], object]) -> Callable[[_Subject], str]:
    """A check that ``action(raw)`` fails with ``expected``."""
    return lambda subject: _expect_errno(expected, functools.partial(action, subject.raw))


def _up_to_date(subject: _Subject) -> str:
    return "yes" if subject.up_to_date else _fail("readable at open")


def _read_nothing(subject: _Subject) -> str:
    return "0 bytes" if subject.raw.read(0) == b"" else _fail("data returned")


def _ack_the_next(subject: _Subject) -> str:
    return _expect_errno(errno.EINVAL, lambda: subject.raw.write(_u32(subject.words[0] + 1)))


def _unknown_ioctl(subject: _Subject) -> str:
    magic = uapi.SYSGENID_IOCTL if subject.abi is Abi.V4 else uapi.SYSGENID_V8_IOCTL
    return _expect_errno(errno.EINVAL, lambda: subject.raw.ioctl(uapi._IO(magic, 0x7F), 0))


def _outdated_count(subject: _Subject) -> str:
    return f"{subject.raw.ioctl(uapi.SYSGENID_GET_OUTDATED_WATCHERS, 0)} outdated"


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


def _driver(subject: _Subject) -> str:
    """Which driver this is, when it says (ours does)."""
    flavour = _module_parameter("flavour") if _is_the_modules_node(subject.path) else None
    if flavour is None:
        raise _SkippedError("not the project's module (it does not say which it is)")
    return _FLAVOUR_MEANING.get(flavour, f"flavour {flavour}")


_BACKEND_MEANING = {
    "vmgenid": "follows the hypervisor's VM generation",
    "none": "none: the kernel has no CONFIG_VMGENID; only triggers change the generation",
    "disabled": "disabled (vmfork=0); only triggers change the generation",
}


def _vm_backend(subject: _Subject) -> str:
    """What drives the generation besides userspace, when the driver says (an attribute of our device)."""
    backend = _module_parameter("backend", MISC_DEVICE) if _is_the_modules_node(subject.path) else None
    if backend is None:
        raise _SkippedError("the driver does not say")
    return _BACKEND_MEANING.get(backend, backend)


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


def _private_mapping(subject: _Subject) -> str:
    raw, words = subject.raw, subject.words
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


def _tracking_of_two(subject: _Subject) -> str:
    raw = subject.raw
    try:
        raw.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, 2)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return "EINVAL (only 0 and 1)"
        raise
    raw.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, 0)
    raise _QuirkError("accepted as on (Amazon Linux's driver takes any non-zero value); the library passes 0 or 1")


def _tracking_round_trip(subject: _Subject) -> str:
    subject.raw.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, 1)
    subject.raw.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, 0)
    return "ok"


def _wait_once(subject: _Subject) -> str:
    raw, abi = subject.raw, subject.abi
    try:
        raw.ioctl(abi.wait_watchers_request, 1)
    except OSError as exc:
        allowed = (errno.EINTR,) if abi is Abi.V4 else (errno.ETIME, errno.EINTR)
        if exc.errno is None or exc.errno not in allowed:
            raise
        return f"{errno.errorcode[exc.errno]} (other watchers outdated)"
    return "0 (no watcher outdated)"


def _trigger_and_ack(subject: _Subject, minimum: int) -> int:
    """Trigger; acknowledge what the device then says (this file must not hold others back)."""
    subject.raw.ioctl(subject.abi.trigger_request, minimum)
    value = int(subject.words[0])
    subject.raw.write(_u32(value))
    return value


def _counter_width(subject: _Subject) -> str:
    top = _trigger_and_ack(subject, _INT_MAX)
    after = _trigger_and_ack(subject, 0)
    if after > _INT_MAX or top > _INT_MAX:
        return f"{top} -> {after}"
    raise _QuirkError(
        f"a signed counter: {top} -> {after}. The counter comes back to values it had (and jumps into the "
        "upper half and back when forced there); the library compares generations with != and sees every change"
    )


def _minimum_width(subject: _Subject) -> str:
    minimum = 2**31 + 16
    before = int(subject.words[0])
    after = _trigger_and_ack(subject, minimum)
    if after >= minimum:
        return f"trigger({minimum}): {before} -> {after}"
    raise _QuirkError(
        f"trigger({minimum}) at {before} gave {after}: the driver compares in a signed int, where 2**31 and "
        "more are negative, so such a minimum is ignored below 2147483647 and taken as it is from there; "
        "the library reports the generation the device gives, never the minimum asked for"
    )


def _caught_up(raw: RawFile, abi: Abi) -> bool:
    try:
        raw.ioctl(abi.wait_watchers_request, 1)
    except OSError as exc:
        if exc.errno in (errno.EINTR, errno.ETIME):
            return False
        raise
    return True


def _no_change_counts_nobody(subject: _Subject) -> str:
    """A trigger whose minimum is the current value, at 2147483647 (or at 2**32 - 1, where a u32
    counter has nowhere to go), changes nothing; watchers that acknowledged must stay uncounted."""
    raw, abi, words = subject.raw, subject.abi, subject.words
    other = open_raw(subject.path)  # a second watcher, besides this file
    try:
        if abi is Abi.V8:
            other.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, 1)
        top = _trigger_and_ack(subject, _INT_MAX)
        other.write(_u32(top))
        if not _caught_up(raw, abi):
            raise _SkippedError("other watchers on this machine are outdated: a count cannot be told apart")
        raw.ioctl(abi.trigger_request, top)
        now = int(words[0])
        if now != top:
            raw.write(_u32(now))
            other.write(_u32(now))
            return f"trigger({top}) at {top} gave {now}: a change"
        if _caught_up(raw, abi):
            return f"trigger({top}) at {top} changed nothing, and counted nobody"
        # Clear it for the machine's other watchers: the next change counts afresh.
        after = _trigger_and_ack(subject, 0)
        other.write(_u32(after))
        raise _QuirkError(
            f"trigger({top}) at {top} changed nothing, yet counted every watcher as outdated, even those that "
            "acknowledged: WAIT_WATCHERS times out until the next change (cleared here by one more trigger). "
            "The orchestrator and wait-watchers name this cause"
        )
    finally:
        other.close()


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


def _user_namespace_trigger(subject: _Subject) -> str:
    """In its own user namespace a process holds every capability, but only there."""
    words = subject.words
    if opened_in_process(subject.path):
        raise _SkippedError("a simulated device lives in this process: a probe in another process cannot open it")
    before = int(words[0])
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _UNSHARED_TRIGGER, subject.path, str(subject.abi.trigger_request)],
            capture_output=True, text=True, check=False, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _SkippedError(f"could not run the probe: {exc}") from None
    what, _, code = done.stdout.strip().partition(" ")
    if done.returncode != 0 or not code.isdigit():
        raise _SkippedError(f"the probe failed: {done.stderr.strip().splitlines()[-1:]}")
    if what == "unshare":
        raise _SkippedError(f"user namespaces are not available here ({errno.errorcode.get(int(code))})")
    if int(code) in (errno.EACCES, errno.EPERM):
        return "EACCES: the capability counts in the initial user namespace"
    if int(code) == 0:
        raise _QuirkError(
            f"accepted ({before} -> {words[0]}): the driver checks the capability in the caller's user "
            "namespace, so any user who can open the node and create a user namespace can fake a restore "
            "for the whole machine. Keep the node root-only or group-only (docs/drivers.md)"
        )
    raise _CheckFailedError(f"the trigger gave {errno.errorcode.get(int(code), code)}")


def _trigger_round_trip(subject: _Subject) -> str:
    raw, abi, words = subject.raw, subject.abi, subject.words
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


#: Every check after the ABI is known, in the order they run.
_CHECKS: tuple[_Check, ...] = (
    _Check("a new file is up to date (not readable)", _up_to_date),
    _Check("read when up to date: EAGAIN", _expect(errno.EAGAIN, lambda raw: raw.read(4)), up_to_date=True),
    _Check("read of 3 bytes: EINVAL", _expect(errno.EINVAL, lambda raw: raw.read(3))),
    _Check("read of 0 bytes returns 0", _read_nothing),
    _Check("write of 5 bytes: EINVAL", _expect(errno.EINVAL, lambda raw: raw.write(b"\0" * 5)), abi=Abi.V4),
    _Check("write of 5 bytes: ENOBUFS", _expect(errno.ENOBUFS, lambda raw: raw.write(b"\0" * 5)), abi=Abi.V8),
    _Check("ack of a non-current generation: EINVAL", _ack_the_next),
    _Check("writable mmap: EPERM", _expect(errno.EPERM, lambda raw: raw.map_page(writable=True))),
    _Check("mmap of two pages: EINVAL", _expect(errno.EINVAL, lambda raw: raw.map_page(2 * uapi.PAGE_SIZE))),
    _Check("mmap at a non-zero offset: EINVAL", _expect(errno.EINVAL, lambda raw: raw.map_page(offset=uapi.PAGE_SIZE))),
    _Check("read-only MAP_PRIVATE mapping", _private_mapping),
    _Check("unknown ioctl: EINVAL", _unknown_ioctl),
    _Check("GET_OUTDATED_WATCHERS answers", _outdated_count, abi=Abi.V4),
    _Check("SET_WATCHER_TRACKING(1) and (0)", _tracking_round_trip, abi=Abi.V8),
    _Check("SET_WATCHER_TRACKING(2)", _tracking_of_two, abi=Abi.V8),
    _Check("WAIT_WATCHERS(1 ms) returns", _wait_once),
    _Check("driver", _driver),
    _Check("VM generation backend", _vm_backend),
    _Check("trigger, read, poll, caller-outdated wait, ack", _trigger_round_trip, trigger=True),
    _Check("the counter is a u32 (after 2147483647 comes 2147483648)", _counter_width, trigger=True),
    _Check("a minimum of 2**31 or more is honoured", _minimum_width, trigger=True),
    _Check("a trigger that changes nothing counts nobody as outdated", _no_change_counts_nobody, trigger=True),
    _Check("a trigger from an unprivileged user namespace is refused", _user_namespace_trigger, trigger=True),
)


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
