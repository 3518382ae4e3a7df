"""Faults: what happens when things go wrong around the library, each outcome asserted.

(Closing a handle from another task or thread while it waits, fork with a handle open,
a module unload while the device is open, and a missing device at start have their
tests beside the feature: test_async_device, test_blocking, test_device,
test_kernel_module, test_watch, test_restore_watcher.)
"""

from __future__ import annotations

import asyncio
import gc
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import anyio
import pytest

from backends import Backend, KernelBackend, load_module, unload_module
from sysgenid_async import AsyncSysGenID, BlockingSysGenID, DeviceNotFoundError, WaitResult, uapi
from sysgenid_async.restore import RestoreHooks, restore_watcher
from sysgenid_async.testing import SimulatedDevice
from sysgenid_async.uapi import Abi

WATCHER_THAT_NEVER_ACKS = textwrap.dedent("""
    import ctypes, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR)
    if sys.argv[2] == "v8":
        ctypes.CDLL(None, use_errno=True).ioctl(fd, ctypes.c_ulong(int(sys.argv[3])), ctypes.c_ulong(1))
    print("ready", flush=True)
    os.read(fd, 4)          # the change arrives ...
    print("read", flush=True)
    os.read(0, 1)           # ... and is never acknowledged: SIGKILL comes first
""")


@pytest.mark.kernel_only
def test_watchers_killed_before_they_ack_stop_counting(backend: Backend) -> None:
    assert isinstance(backend, KernelBackend)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WATCHER_THAT_NEVER_ACKS, backend.path, backend.abi.value,
             str(uapi.SYSGENID_V8_SET_WATCHER_TRACKING)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for _ in range(4)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        with BlockingSysGenID.open(backend.path) as probe:  # it acknowledges: a watcher
            backend.bump()
            for worker in workers:
                assert worker.stdout.readline().strip() == "read"  # type: ignore[union-attr]
            if backend.abi is Abi.V4:
                assert probe.outdated_watchers() == 4 + 1, "the four, and this probe (every v4 file counts)"
            probe.ack(probe.generation)  # an outdated caller cannot wait for the others
            assert probe.wait_watchers(0.05) is WaitResult.TIMED_OUT
            for worker in workers:
                worker.send_signal(signal.SIGKILL)
                worker.wait(30)
            if backend.abi is Abi.V4:
                assert probe.outdated_watchers() == 0
            assert probe.wait_watchers(5) is WaitResult.CAUGHT_UP
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(30)
            for stream in (worker.stdin, worker.stdout):
                if stream is not None:
                    stream.close()


@pytest.mark.anyio
async def test_hooks_that_raise_hang_or_cancel_themselves_leave_the_watcher_running(backend: Backend) -> None:
    hooks = RestoreHooks()
    fixed = threading.Event()
    ran: list[str] = []

    @hooks.register
    def raises(generation: int) -> None:
        ran.append("raises")
        if not fixed.is_set():
            raise RuntimeError("no entropy")

    @hooks.register(timeout=0.05)
    async def hangs(generation: int) -> None:
        ran.append("hangs")
        if not fixed.is_set():
            await anyio.sleep_forever()

    @hooks.register
    async def cancels_itself(generation: int) -> None:
        ran.append("cancels itself")
        if not fixed.is_set():
            raise anyio.get_cancelled_exc_class()()

    async with restore_watcher(backend.path, hooks=hooks) as watcher:
        first = backend.bump()
        with anyio.fail_after(30):
            while watcher.last_error is None:  # noqa: ASYNC110 - the watcher exposes no event
                await anyio.sleep(0.01)
        assert {type(e.__cause__) for e in watcher.last_error.exceptions} >= {RuntimeError, TimeoutError}
        assert [h.name for h in watcher.last_error.hooks][:2] == ["raises", "hangs"]
        assert watcher.acknowledged != first, "a failed hook holds the acknowledgement"
        fixed.set()
        second = backend.bump()
        with anyio.fail_after(30):
            while watcher.acknowledged != second:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert watcher.last_error is None
    assert ran.count("cancels itself") >= 2, "the hook that cancelled itself ran again on the next change"


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_factory(request: pytest.FixtureRequest) -> Callable[[], asyncio.AbstractEventLoop]:
    if request.param == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def test_the_event_loop_closed_under_a_pending_wait(
    backend: Backend, event_loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """The wait can never resume; closing the handle must not raise, and must release the file."""
    loop = event_loop_factory()
    handle = AsyncSysGenID.open(backend.path)
    task = loop.create_task(handle.wait_for_change())
    loop.run_until_complete(asyncio.sleep(0.05))
    assert not task.done()
    loop.close()
    handle.close()  # no loop to notify, and the waiter can never resume: released now
    assert handle.closed
    assert backend.open_files() == 0, "the file went with the close, not with the task"
    del task  # the abandoned wait is finalised later: it must not release anything twice
    gc.collect()
    assert backend.open_files() == 0


@pytest.fixture
def frequent_signals() -> Iterator[list[int]]:
    """SIGALRM every 5 ms, counted."""
    received: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: received.append(signum))
    signal.setitimer(signal.ITIMER_REAL, 0.005, 0.005)
    try:
        yield received
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)


def test_signals_during_blocking_waits_do_not_end_them(backend: Backend, frequent_signals: list[int]) -> None:
    with BlockingSysGenID.open(backend.path) as handle:
        before = len(frequent_signals)
        bumper = threading.Timer(0.3, backend.bump)
        bumper.start()
        generation = handle.wait_for_change()
        bumper.join()
        assert generation == backend.generation
        handle.ack(generation)
        peer = backend.peer()
        try:
            backend.bump()
            handle.ack(handle.wait_for_change(timeout=5) or -1)
            started = time.monotonic()
            assert handle.wait_watchers(0.3) is WaitResult.TIMED_OUT, "signals must not end the wait early"
            assert time.monotonic() - started >= 0.25
            acker = threading.Timer(0.2, peer.ack)
            acker.start()
            assert handle.wait_watchers(10) is WaitResult.CAUGHT_UP
            acker.join()
        finally:
            peer.close()
        assert len(frequent_signals) - before > 20, "the signals did arrive during the waits"


class SignalRaisedError(Exception):
    pass


def test_a_signal_handler_that_raises_ends_a_blocking_wait_cleanly(backend: Backend) -> None:
    def interrupt(signum: int, frame: object) -> None:
        raise SignalRaisedError

    # Which threads, not how many: a thread of an earlier test may end meanwhile.
    threads = set(threading.enumerate())
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with BlockingSysGenID.open(backend.path) as handle:
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            with pytest.raises(SignalRaisedError):
                handle.wait_for_change()
            backend.bump()
            assert handle.wait_for_change(timeout=5) == backend.generation, "still usable"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
    assert set(threading.enumerate()) <= threads, "no thread left behind"


def test_a_device_that_appears_later_is_opened_by_the_next_attempt(
    backend: Backend, request: pytest.FixtureRequest,
) -> None:
    """The library does not wait for the device: an open fails plainly until it exists."""
    if isinstance(backend, KernelBackend):
        unload_module(backend.module_name)
        try:
            with pytest.raises(DeviceNotFoundError):
                AsyncSysGenID.open(backend.path)
        finally:
            load_module(request.config.getoption("--kernel-module"), backend.spec,
                        abi_param=not request.config.getoption("--kernel-no-abi-param"))
        path = backend.path
    else:
        path = f"{backend.path}-later"
        with pytest.raises(DeviceNotFoundError):
            AsyncSysGenID.open(path)
        installed = SimulatedDevice(backend.abi).installed(path, set_env=False)
        installed.__enter__()
        request.addfinalizer(lambda: installed.__exit__(None, None, None))
    handle = AsyncSysGenID.open(path)
    try:
        assert handle.generation == 0, "a device that appeared now starts at generation 0"
    finally:
        handle.close()
