"""A non-destructive conformance check of the live device, behind ``sysgenid-async selftest``.

It speaks to the device through raw syscalls, as a client would, and checks each
documented behaviour. It changes the generation only with ``allow_trigger=True``.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import select
import sys
from collections.abc import Callable, Iterator

from . import uapi
from .device import resolve_device_path
from .rawfile import RawFile, open_raw
from .uapi import Abi

__all__ = ["CheckResult", "run_selftest"]


@dataclasses.dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # "pass", "fail" or "skip"
    detail: str = ""


class _CheckFailedError(Exception):
    pass


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
    """Run every check against the device at ``path``; returns one result per check."""
    resolved = resolve_device_path(path)
    results: list[CheckResult] = []
    try:
        raw = open_raw(resolved)
    except OSError as exc:
        return [CheckResult("open O_RDWR|O_NONBLOCK|O_CLOEXEC", "fail", f"{resolved}: {exc.strerror}")]
    try:
        results.extend(_run_checks(raw, resolved, allow_trigger))
    finally:
        raw.close()
    return results


def _run_checks(raw: RawFile, path: str, allow_trigger: bool) -> Iterator[CheckResult]:
    yield CheckResult("open O_RDWR|O_NONBLOCK|O_CLOEXEC", "pass", path)
    abi: Abi | None = None

    def check(name: str, body: Callable[[], str]) -> CheckResult:
        try:
            return CheckResult(name, "pass", body())
        except (_CheckFailedError, OSError) as exc:
            return CheckResult(name, "fail", str(exc))

    yield check(
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

    result = check("ABI detected by the v4 query", detect)
    yield result
    if abi is None:
        return

    page = raw.map_page()
    words = page.cast("I")
    try:
        yield check("mmap one page PROT_READ MAP_SHARED", lambda: f"generation {words[0]}")
        yield from _checks_for(raw, abi, words, allow_trigger, check)
    finally:
        words.release()
        page.release()


def _fail(message: str) -> str:
    raise _CheckFailedError(message)


def _checks_for(
    raw: RawFile,
    abi: Abi,
    words: memoryview,
    allow_trigger: bool,
    check: Callable[[str, Callable[[], str]], CheckResult],
) -> Iterator[CheckResult]:
    # A fresh open file starts up to date, unless another change raced the open.
    up_to_date = not _readable(raw)
    yield check("a new file is up to date (not readable)", lambda: "yes" if up_to_date else _fail("readable at open"))
    if up_to_date:
        yield check("read when up to date: EAGAIN", lambda: _expect_errno(errno.EAGAIN, lambda: raw.read(4)))
    yield check("read of 3 bytes: EINVAL", lambda: _expect_errno(errno.EINVAL, lambda: raw.read(3)))
    yield check("read of 0 bytes returns 0", lambda: "0 bytes" if raw.read(0) == b"" else _fail("data returned"))
    wrong_size = errno.ENOBUFS if abi is Abi.V8 else errno.EINVAL
    yield check(
        f"write of 5 bytes: {errno.errorcode[wrong_size]}",
        lambda: _expect_errno(wrong_size, lambda: raw.write(b"\0" * 5)),
    )
    yield check(
        "ack of a non-current generation: EINVAL",
        lambda: _expect_errno(errno.EINVAL, lambda: raw.write(_u32(words[0] + 1))),
    )
    yield check("writable mmap: EPERM", lambda: _expect_errno(errno.EPERM, lambda: raw.map_page(writable=True)))
    yield check(
        "mmap of two pages: EINVAL",
        lambda: _expect_errno(errno.EINVAL, lambda: raw.map_page(2 * uapi.PAGE_SIZE)),
    )
    yield check(
        "mmap at a non-zero offset: EINVAL",
        lambda: _expect_errno(errno.EINVAL, lambda: raw.map_page(offset=uapi.PAGE_SIZE)),
    )
    magic = uapi.SYSGENID_IOCTL if abi is Abi.V4 else uapi.SYSGENID_V8_IOCTL
    yield check(
        "unknown ioctl: EINVAL",
        lambda: _expect_errno(errno.EINVAL, lambda: raw.ioctl(uapi._IO(magic, 0x7F), 0)),
    )
    if abi is Abi.V4:
        yield check(
            "GET_OUTDATED_WATCHERS answers", lambda: f"{raw.ioctl(uapi.SYSGENID_GET_OUTDATED_WATCHERS, 0)} outdated"
        )
    else:
        yield check("SET_WATCHER_TRACKING(1) and (0)", lambda: _tracking_round_trip(raw))
        yield check(
            "SET_WATCHER_TRACKING(2): EINVAL",
            lambda: _expect_errno(errno.EINVAL, lambda: raw.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, 2)),
        )
    yield check("WAIT_WATCHERS(1 ms) returns", lambda: _wait_once(raw, abi))
    yield _backend_result()
    if not allow_trigger:
        yield CheckResult("trigger and acknowledge", "skip", "needs --allow-trigger (changes the generation)")
        return
    yield check("trigger, read, poll, caller-outdated wait, ack", lambda: _trigger_round_trip(raw, abi, words))


BACKEND_PARAMETER = "/sys/module/sysgenid/parameters/backend"


def _backend_result() -> CheckResult:
    """What drives the generation besides userspace, when the driver says (ours does)."""
    try:
        with open(BACKEND_PARAMETER) as parameter:
            backend = parameter.read().strip()
    except OSError:
        return CheckResult("VM generation backend", "skip", "the driver does not say")
    meaning = {
        "vmgenid": "follows the hypervisor's VM generation",
        "none": "none: the kernel has no CONFIG_VMGENID; only triggers change the generation",
        "disabled": "disabled (vmfork=0); only triggers change the generation",
    }
    return CheckResult("VM generation backend", "pass", meaning.get(backend, backend))


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
    failed = sum(r.status == "fail" for r in results)
    lines.append(f"checks failed: {failed} of {len(results)}" if failed else f"all {len(results)} checks passed")
    return os.linesep.join(lines)
