"""The device's documented behaviour, through raw syscalls, on every backend.

The same functions run against the simulator on the host and against the kernel
module in the guest; the simulator is faithful because both pass.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import select
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backends import KERNEL_PATH, NOBODY, Backend, KernelBackend, start_low, top_of
from sysgenid_async import uapi
from sysgenid_async.rawfile import RawFile
from sysgenid_async.testing import TRIGGER_CAPABILITIES, Quirk
from sysgenid_async.uapi import Abi

U32_MAX = 2**32 - 1
INT_MAX = 2**31 - 1


def expect_errno(code: int, action: Callable[[], object]) -> None:
    with pytest.raises(OSError) as caught:  # noqa: PT011 - the errno is what is checked
        action()
    got = errno.errorcode.get(caught.value.errno or 0)
    assert caught.value.errno == code, f"expected {errno.errorcode[code]}, got {got}"


def readable(raw: RawFile, timeout_ms: int = 0) -> bool:
    poller = select.poll()
    poller.register(raw.fileno(), select.POLLIN)
    return bool(poller.poll(timeout_ms))


def read_gen(raw: RawFile) -> int | None:
    try:
        return int.from_bytes(raw.read(4), sys.byteorder)
    except BlockingIOError:
        return None


def ack(raw: RawFile, generation: int) -> None:
    assert raw.write(generation.to_bytes(4, sys.byteorder)) == 4


def outdated(raw: RawFile) -> int:
    return raw.ioctl(uapi.SYSGENID_GET_OUTDATED_WATCHERS, 0)


def wait_watchers(raw: RawFile, abi: Abi, ms: int) -> int:
    """0, or the errno WAIT_WATCHERS gave."""
    try:
        raw.ioctl(abi.wait_watchers_request, ms)
    except OSError as exc:
        return exc.errno or -1
    return 0


def timeout_errno(abi: Abi) -> int:
    return errno.EINTR if abi is Abi.V4 else errno.ETIME


@pytest.fixture
def opened(backend: Backend) -> Iterator[Callable[..., RawFile]]:
    """Open raw files that are closed after the test, even when it fails."""
    files: list[RawFile] = []

    def open_(**kwargs: bool) -> RawFile:
        raw = backend.open_raw(**kwargs)
        files.append(raw)
        return raw

    yield open_
    for raw in files:
        raw.close()


def open_watcher(opened: Callable[..., RawFile], backend: Backend) -> RawFile:
    """A file that counts as a watcher in either ABI."""
    raw = opened()
    if backend.abi is Abi.V8:
        raw.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, 1)
    return raw


# -- open / read / write / poll -----------------------------------------------------------


def test_a_new_file_is_up_to_date(opened: Callable[..., RawFile]) -> None:
    raw = opened()
    assert raw.is_character_device()
    assert not readable(raw)
    expect_errno(errno.EAGAIN, lambda: raw.read(4))


@pytest.mark.kernel_only
@pytest.mark.stricter_choice("the file is a stream (stream_open): lseek and pread give ESPIPE")
def test_the_file_is_a_stream(backend: Backend, opened: Callable[..., RawFile]) -> None:
    # stream_open() makes it unseekable, with no .llseek of the module's own
    raw = opened()
    for whence in (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END):
        expect_errno(errno.ESPIPE, functools.partial(os.lseek, raw.fileno(), 0, whence))
    backend.bump()
    expect_errno(errno.ESPIPE, lambda: os.pread(raw.fileno(), 4, 0))


def test_read_sizes(backend: Backend, opened: Callable[..., RawFile]) -> None:
    raw = opened()
    assert raw.read(0) == b""
    expect_errno(errno.EINVAL, lambda: raw.read(3))
    new = backend.bump()
    assert raw.read(0) == b""
    expect_errno(errno.EINVAL, lambda: raw.read(1))
    data = raw.read(16)  # a bigger buffer gets exactly the u32
    assert data == new.to_bytes(4, sys.byteorder)


def test_a_change_stays_readable_until_acknowledged(backend: Backend, opened: Callable[..., RawFile]) -> None:
    raw = opened()
    new = backend.bump()
    assert readable(raw)
    assert read_gen(raw) == new
    assert read_gen(raw) == new, "reading must not acknowledge"
    assert readable(raw)
    ack(raw, new)
    assert not readable(raw)
    assert read_gen(raw) is None


def test_acknowledging_a_generation_that_is_not_current(backend: Backend, opened: Callable[..., RawFile]) -> None:
    raw = opened()
    old = backend.bump()
    new = backend.bump()
    expect_errno(errno.EINVAL, lambda: ack(raw, old))
    expect_errno(errno.EINVAL, lambda: ack(raw, (new + 1) & U32_MAX))
    assert readable(raw), "a rejected ack changes nothing"
    ack(raw, new)
    assert not readable(raw)


def test_acknowledging_the_current_generation_again_is_harmless(
    backend: Backend, opened: Callable[..., RawFile]
) -> None:
    raw = opened()
    ack(raw, backend.generation)
    assert not readable(raw)


@pytest.mark.parametrize("size", [1, 3, 5, 8])
def test_write_of_the_wrong_size(backend: Backend, opened: Callable[..., RawFile], size: int) -> None:
    raw = opened()
    backend.bump()
    expected = errno.ENOBUFS if backend.abi is Abi.V8 else errno.EINVAL
    expect_errno(expected, lambda: raw.write(b"\0" * size))
    assert readable(raw)


def test_a_read_only_file_cannot_acknowledge(backend: Backend, opened: Callable[..., RawFile]) -> None:
    raw = opened(readonly=True)
    new = backend.bump()
    assert read_gen(raw) == new
    expect_errno(errno.EBADF, lambda: ack(raw, new))


def test_blocking_read_returns_on_the_next_change(backend: Backend, opened: Callable[..., RawFile]) -> None:
    raw = opened(nonblock=False)
    results: list[int | None] = []
    reader = threading.Thread(target=lambda: results.append(read_gen(raw)))
    reader.start()
    reader.join(0.2)
    assert reader.is_alive(), "a blocking read must wait while up to date"
    new = backend.bump()
    reader.join(30)
    assert results == [new]


def test_poll_wakes_on_a_change(backend: Backend, opened: Callable[..., RawFile]) -> None:
    raw = opened()
    bumper = threading.Timer(0.1, backend.bump)
    bumper.start()
    try:
        assert readable(raw, timeout_ms=30_000)
    finally:
        bumper.join()


# -- mmap ---------------------------------------------------------------------------------


def test_the_mapped_page_follows_the_generation(backend: Backend, opened: Callable[..., RawFile]) -> None:
    raw = opened()
    page = raw.map_page()
    words = page.cast("I")
    try:
        assert words[0] == backend.generation
        new = backend.bump()
        assert words[0] == new
        assert page.readonly
        with pytest.raises(TypeError):
            page[0] = 1
    finally:
        words.release()
        page.release()


def test_mapping_errors(opened: Callable[..., RawFile]) -> None:
    raw = opened()
    expect_errno(errno.EPERM, lambda: raw.map_page(writable=True))
    expect_errno(errno.EINVAL, lambda: raw.map_page(2 * uapi.PAGE_SIZE))
    expect_errno(errno.EINVAL, lambda: raw.map_page(offset=uapi.PAGE_SIZE))


@pytest.mark.stricter_choice("a MAP_PRIVATE mapping is refused with EINVAL")
def test_a_private_mapping(backend: Backend, opened: Callable[..., RawFile]) -> None:
    raw = opened()
    if Quirk.PRIVATE_MAPPING not in backend.quirks:
        expect_errno(errno.EINVAL, lambda: raw.map_page(shared=False))
        return
    expect_errno(errno.EPERM, lambda: raw.map_page(writable=True, shared=False))
    page = raw.map_page(shared=False)
    words = page.cast("I")
    try:
        assert page.readonly
        new = backend.bump()
        assert words[0] == new, "the private mapping is of the live page"
    finally:
        words.release()
        page.release()


# -- trigger ------------------------------------------------------------------------------


def test_trigger_sets_max_of_minimum_and_next(backend: Backend, opened: Callable[..., RawFile]) -> None:
    raw = opened()
    start_low(backend)
    start = backend.bump(1000)
    assert start >= 1000
    raw.ioctl(backend.abi.trigger_request, 0)
    assert backend.generation == start + 1
    raw.ioctl(backend.abi.trigger_request, start + 50)
    assert backend.generation == start + 50
    raw.ioctl(backend.abi.trigger_request, 3)
    assert backend.generation == start + 51


@pytest.mark.breaks_on(Quirk.SIGNED_COUNTER)
def test_the_generation_wraps_at_u32(backend: Backend, opened: Callable[..., RawFile]) -> None:
    start_low(backend)  # a signed counter at 2**31 - 1 or above would take the minimum too
    raw = opened()
    raw.ioctl(backend.abi.trigger_request, U32_MAX)
    assert backend.generation == U32_MAX
    assert read_gen(raw) == U32_MAX
    ack(raw, U32_MAX)
    raw.ioctl(backend.abi.trigger_request, 0)
    assert backend.generation == 0
    assert read_gen(raw) == 0
    ack(raw, 0)


@pytest.mark.breaks_on(Quirk.RECOUNT_ALL_TRACKED)
def test_forcing_the_current_maximum_changes_nothing(backend: Backend, opened: Callable[..., RawFile]) -> None:
    # max(top, top + 1 == 0) is the current value: no change, nobody outdated
    top = top_of(backend)
    raw = open_watcher(opened, backend)
    caller = opened()
    raw.ioctl(backend.abi.trigger_request, top)
    ack(raw, top)
    ack(caller, top)
    raw.ioctl(backend.abi.trigger_request, top)
    assert backend.generation == top
    assert not readable(raw)
    assert wait_watchers(caller, backend.abi, 10) == 0, "nobody is outdated"
    backend.bump()


@pytest.mark.with_quirk(Quirk.SIGNED_COUNTER)
def test_a_signed_counter(backend: Backend, opened: Callable[..., RawFile]) -> None:
    start_low(backend)
    raw = opened()
    raw.ioctl(backend.abi.trigger_request, 2**31 + 5)
    assert backend.generation == 1, "a minimum of 2**31 or more is ignored"
    raw.ioctl(backend.abi.trigger_request, U32_MAX)
    assert backend.generation == 2, "2**32 - 1 is -1: ignored too"
    raw.ioctl(backend.abi.trigger_request, 6)
    ack(raw, 6)
    raw.ioctl(backend.abi.trigger_request, INT_MAX)
    assert backend.generation == INT_MAX
    ack(raw, INT_MAX)
    raw.ioctl(backend.abi.trigger_request, 0)
    assert backend.generation == 0, "after 2147483647 comes 0"
    raw.ioctl(backend.abi.trigger_request, INT_MAX)
    ack(raw, INT_MAX)
    raw.ioctl(backend.abi.trigger_request, 6)
    assert backend.generation == 6, "back to a value this file acknowledged before"
    assert readable(raw), "it is still a change for a file that acknowledged 2147483647"
    assert read_gen(raw) == 6
    ack(raw, 6)
    raw.ioctl(backend.abi.trigger_request, INT_MAX)
    ack(raw, INT_MAX)
    raw.ioctl(backend.abi.trigger_request, 2**31 + 5)
    assert backend.generation == 2**31 + 5, "at 2147483647, current + 1 is -2**31: the minimum wins"
    assert read_gen(raw) == 2**31 + 5
    ack(raw, 2**31 + 5)
    raw.ioctl(backend.abi.trigger_request, 2**31 + 9)
    assert backend.generation == 2**31 + 9, "in the upper half both are negative: the larger wins"
    ack(raw, 2**31 + 9)
    raw.ioctl(backend.abi.trigger_request, 0)
    assert backend.generation == 0, "from the upper half, a plain change gives 0"
    ack(raw, 0)


@pytest.mark.with_quirk(Quirk.RECOUNT_ALL_TRACKED)
def test_a_trigger_that_changes_nothing_outdates_every_tracked_watcher(
    backend: Backend, opened: Callable[..., RawFile]
) -> None:
    start_low(backend)
    watcher = open_watcher(opened, backend)
    caller = opened()
    caller.ioctl(backend.abi.trigger_request, INT_MAX)
    ack(watcher, INT_MAX)
    ack(caller, INT_MAX)
    assert wait_watchers(caller, backend.abi, 10) == 0
    caller.ioctl(backend.abi.trigger_request, INT_MAX)
    assert backend.generation == INT_MAX and not readable(watcher), "nothing changed"
    assert wait_watchers(caller, backend.abi, 10) == timeout_errno(backend.abi), "yet the watcher counts"
    ack(watcher, INT_MAX)
    assert wait_watchers(caller, backend.abi, 10) == timeout_errno(backend.abi), "its ack does not uncount it"
    watcher.close()
    assert wait_watchers(caller, backend.abi, 10) == timeout_errno(backend.abi), "nor does its close"
    caller.ioctl(backend.abi.trigger_request, 0)
    ack(caller, 0)
    assert wait_watchers(caller, backend.abi, 10) == 0, "the next real change counts afresh"


@pytest.mark.kernel_only
@pytest.mark.breaks_on(Quirk.CALLER_USERNS_CAPABILITY)
def test_a_trigger_from_a_user_namespace_is_refused(backend: Backend) -> None:
    # Inside its own user namespace an unprivileged user holds every capability, but
    # only there: the machine-wide generation is not the namespace's to change.
    assert isinstance(backend, KernelBackend)
    script = textwrap.dedent(f"""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open({backend.path!r}, os.O_RDWR)
        if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
            raise SystemExit("unshare: " + os.strerror(ctypes.get_errno()))
        rc = libc.ioctl(fd, ctypes.c_ulong({backend.abi.trigger_request}), ctypes.c_ulong(0))
        print(0 if rc == 0 else ctypes.get_errno())
    """)
    before = backend.generation
    with backend.open_to_all():
        done = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-I", "-c",
             script], capture_output=True, text=True, check=False, timeout=60,
        )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == errno.EACCES
    assert backend.generation == before


@pytest.mark.kernel_only
@pytest.mark.stricter_choice("the node is 0666: any user may open it (the trigger needs a capability)")
def test_the_node_mode(backend: Backend) -> None:
    mode = stat.S_IMODE(os.stat(KERNEL_PATH).st_mode)
    assert mode == (0o600 if Quirk.ROOT_ONLY_NODE in backend.quirks else 0o666)


def test_trigger_needs_a_capability(backend: Backend) -> None:
    before = backend.generation
    assert backend.trigger_with(frozenset()) == errno.EACCES
    assert backend.generation == before
    assert backend.trigger_with(frozenset({"CAP_CHECKPOINT_RESTORE"})) == 0
    assert backend.generation == (before + 1) & U32_MAX
    assert backend.trigger_with(frozenset({"CAP_SYS_ADMIN"})) == 0
    assert backend.generation == (before + 2) & U32_MAX
    assert {"CAP_CHECKPOINT_RESTORE", "CAP_SYS_ADMIN"} == TRIGGER_CAPABILITIES


# -- ioctls and the ABI difference table --------------------------------------------------


def test_unknown_commands_give_einval(backend: Backend, opened: Callable[..., RawFile]) -> None:
    raw = opened()
    own = uapi.SYSGENID_IOCTL if backend.abi is Abi.V4 else uapi.SYSGENID_V8_IOCTL
    expect_errno(errno.EINVAL, lambda: raw.ioctl(uapi._IO(own, 0x7F), 0))
    expect_errno(errno.EINVAL, lambda: raw.ioctl(uapi._IO(own, 4), 0))
    if backend.abi is Abi.V8:
        # the v4 query: how clients tell the ABIs apart, harmless on v8
        expect_errno(errno.EINVAL, lambda: raw.ioctl(uapi.SYSGENID_GET_OUTDATED_WATCHERS, 0))
    else:
        expect_errno(errno.EINVAL, lambda: raw.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, 1))


@pytest.mark.only_abi("v4")
def test_v4_counts_every_open_file(backend: Backend, opened: Callable[..., RawFile]) -> None:
    first, second, third = opened(), opened(), opened(readonly=True)
    assert outdated(first) == 0
    new = backend.bump()
    assert outdated(first) == 3
    ack(first, new)
    assert outdated(first) == 2
    second.close()
    assert outdated(first) == 1, "closing an outdated watcher drops the count"
    assert read_gen(third) == new
    third.close()
    assert outdated(first) == 0


@pytest.mark.only_abi("v8")
def test_v8_only_tracked_files_count(backend: Backend, opened: Callable[..., RawFile]) -> None:
    untracked = opened()
    backend.bump()
    caller = opened()
    assert wait_watchers(caller, backend.abi, 10) == 0, "an untracked outdated file holds nobody back"
    untracked.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, 1)
    assert wait_watchers(caller, backend.abi, 10) == errno.ETIME
    untracked.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, 0)
    assert wait_watchers(caller, backend.abi, 10) == 0, "turning tracking off drops the count"
    untracked.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, 1)
    ack(untracked, read_gen(untracked) or 0)
    assert wait_watchers(caller, backend.abi, 10) == 0


@pytest.mark.only_abi("v8")
@pytest.mark.stricter_choice("SET_WATCHER_TRACKING takes 0 or 1; 2 gives EINVAL")
def test_tracking_takes_zero_or_one(backend: Backend, opened: Callable[..., RawFile]) -> None:
    file, caller = opened(), opened()
    ack(caller, backend.bump())
    if Quirk.TRACKING_ANY_NONZERO not in backend.quirks:
        expect_errno(errno.EINVAL, lambda: file.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, 2))
        assert wait_watchers(caller, backend.abi, 10) == 0, "a refused call changes nothing"
        return
    file.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, 2)
    assert wait_watchers(caller, backend.abi, 10) == errno.ETIME, "2 turned tracking on"


# -- WAIT_WATCHERS ------------------------------------------------------------------------


def test_wait_watchers_results(backend: Backend, opened: Callable[..., RawFile]) -> None:
    other = open_watcher(opened, backend)
    caller = opened()
    assert wait_watchers(caller, backend.abi, 10) == 0, "nobody outdated: returns at once"
    new = backend.bump()
    assert wait_watchers(caller, backend.abi, 0) == errno.EINTR, "an outdated caller gets EINTR, even untimed"
    ack(caller, new)
    assert wait_watchers(caller, backend.abi, 20) == timeout_errno(backend.abi)
    ack(other, new)
    assert wait_watchers(caller, backend.abi, 0) == 0


def test_wait_watchers_ends_when_the_caller_becomes_outdated(backend: Backend, opened: Callable[..., RawFile]) -> None:
    other = open_watcher(opened, backend)
    caller = opened()
    backend.bump()
    ack(caller, read_gen(caller) or 0)
    results: list[int] = []
    waiter = threading.Thread(target=lambda: results.append(wait_watchers(caller, backend.abi, 60_000)))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive(), "must wait while another watcher is outdated"
    backend.bump()
    waiter.join(30)
    assert results == [errno.EINTR]
    assert read_gen(other) is not None


def test_wait_watchers_across_processes(backend: Backend, opened: Callable[..., RawFile]) -> None:
    peers = [backend.peer(), backend.peer()]
    try:
        orchestrator = opened()
        new = backend.bump()
        assert [p.read() for p in peers] == [new, new]
        ack(orchestrator, new)
        assert wait_watchers(orchestrator, backend.abi, 20) == timeout_errno(backend.abi)
        assert peers[0].ack() == new
        assert wait_watchers(orchestrator, backend.abi, 20) == timeout_errno(backend.abi)
        results: list[int] = []
        waiter = threading.Thread(target=lambda: results.append(wait_watchers(orchestrator, backend.abi, 60_000)))
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive(), "one peer is still outdated"
        assert peers[1].ack() == new
        waiter.join(30)
        assert results == [0]
    finally:
        for peer in peers:
            peer.close()


def test_closing_an_outdated_watcher_releases_the_waiter(backend: Backend, opened: Callable[..., RawFile]) -> None:
    peer = backend.peer()
    try:
        orchestrator = opened()
        new = backend.bump()
        ack(orchestrator, new)
        assert wait_watchers(orchestrator, backend.abi, 20) == timeout_errno(backend.abi)
    finally:
        peer.close()
    assert wait_watchers(orchestrator, backend.abi, 0) == 0


@pytest.mark.kernel_only
@pytest.mark.stricter_choice("a signal ends WAIT_WATCHERS with EINTR, never restarts it")
def test_a_signal_during_wait_watchers(backend: Backend, opened: Callable[..., RawFile]) -> None:
    other = open_watcher(opened, backend)
    caller = opened()
    new = backend.bump()
    ack(caller, new)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
    restarts = Quirk.RESTART_ON_SIGNAL in backend.quirks
    timeout_ms = 400 if restarts else 60_000
    # SA_RESTART, as a C service would install its handlers: a driver that returns
    # ERESTARTSYS has the wait restarted, with its whole timeout, instead of ended.
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: None)
    signal.siginterrupt(signal.SIGALRM, False)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        started = time.monotonic()
        rc = libc.ioctl(caller.fileno(), backend.abi.wait_watchers_request, timeout_ms)
        elapsed = time.monotonic() - started
        code = ctypes.get_errno() if rc == -1 else 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if restarts:
        assert code == timeout_errno(backend.abi)
        assert elapsed >= 0.1 + 0.4 - 0.02, "restarted after the signal with the whole timeout"
    else:
        assert code == errno.EINTR, "the signal ends the wait"
        assert elapsed < 60, "long before the timeout"
    ack(other, new)


# -- 32-bit programs ----------------------------------------------------------------------------

ABI32_SOURCE = Path(__file__).resolve().parent / "c" / "abi32.c"
UAPI_HEADERS = Path(__file__).resolve().parent.parent / "kernel" / "uapi"


@pytest.fixture(scope="module")
def abi32_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/c/abi32.c built as a static 32-bit x86 program (gcc-multilib)."""
    binary = tmp_path_factory.mktemp("abi32") / "abi32"
    built = subprocess.run(
        ["gcc", "-m32", "-static", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{UAPI_HEADERS}", "-o", str(binary),
         str(ABI32_SOURCE)],
        capture_output=True, text=True, check=False,
    )
    assert built.returncode == 0, f"gcc -m32 (package gcc-multilib) failed:\n{built.stderr}"
    assert binary.read_bytes()[4] == 1, "not an ELFCLASS32 program"
    return binary


@pytest.mark.kernel_only
@pytest.mark.breaks_on(Quirk.SIGNED_COUNTER)
def test_a_32_bit_program_speaks_the_same_abi(backend: Backend, abi32_program: Path) -> None:
    # Through the compat ioctl path every argument is an integer, zero-extended: a minimum of
    # 2**31 and above arrives whole, and the answers are those of a 64-bit caller.
    start_low(backend)
    minimum = 2**31 + 5
    done = subprocess.run([str(abi32_program), backend.path, backend.abi.value[1:], str(minimum)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"generation={minimum}", f"wait={errno.EINTR}", "ack=4"]
    assert backend.generation == minimum
