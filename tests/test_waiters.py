"""The device layer's one waiter registry: every kind of waiter, on every loop and thread,
is woken by one close, and the file is closed only when the last of them has left."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import anyio
import pytest

from backends import Backend
from sysgenid_async import AsyncSysGenID, BlockingSysGenID, DeviceClosedError
from sysgenid_async.device import Device
from sysgenid_async.errors import ConcurrentWaitError

LOOPS = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}


def _until(condition: Callable[[], bool], what: str) -> None:
    give_up = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < give_up, f"never happened: {what}"
        time.sleep(0.005)


def _released(device: Device) -> bool:
    """The file is closed, and nothing holds it: no waiter, no syscall in flight."""
    return device._in_flight == 0 and not device._waiters and not device._finalizer.alive


def test_one_close_wakes_tasks_on_three_loops_and_a_thread(backend: Backend) -> None:
    """Each loop runs in its own thread and waits on the same handle; a blocking thread waits
    beside them. One close from the main thread wakes all four (before the registry, only
    the loop that waited last was told, and the others waited on)."""
    handle = AsyncSysGenID.open(backend.path)
    outcomes: dict[str, str] = {}

    def on_loop(name: str) -> None:
        async def wait() -> None:
            try:
                await handle.wait_for_change()
            except DeviceClosedError:
                outcomes[name] = "closed"
            else:
                outcomes[name] = "returned"

        backend_name, options = LOOPS[name]
        anyio.run(wait, backend=backend_name, backend_options=options)

    def in_a_thread() -> None:
        try:
            handle.device.wait_readable(None)
        except DeviceClosedError:
            outcomes["thread"] = "closed"
        else:
            outcomes["thread"] = "returned"

    threads = [threading.Thread(target=on_loop, args=(name,)) for name in LOOPS]
    threads.append(threading.Thread(target=in_a_thread))
    for thread in threads:
        thread.start()
    try:
        _until(lambda: len(handle.device._waiters) == len(threads), "every waiter registered")
        assert {waiter.loop is None for waiter in handle.device._waiters} == {True, False}
        handle.close()
    finally:
        handle.close()
        for thread in threads:
            thread.join(30)
    assert not any(thread.is_alive() for thread in threads), f"still waiting after the close: {outcomes}"
    assert outcomes == dict.fromkeys([*LOOPS, "thread"], "closed")
    assert _released(handle.device)
    assert backend.open_files() == 0


async def _within_30_seconds(handle: AsyncSysGenID) -> int:
    with anyio.fail_after(30):  # a waiter nobody wakes fails here, not by hanging the suite
        return await handle.wait_for_change()


@pytest.mark.parametrize(("first", "second"), [("asyncio", "asyncio"), ("asyncio", "trio"), ("trio", "uvloop")])
def test_a_handle_waited_on_by_one_loop_then_another_wakes_the_second(
    backend: Backend, first: str, second: str
) -> None:
    """The handle remembers the waiter of the loop that waited last (finding a loop's token is the
    costliest part of a wait); a new loop in the same thread must get its own, or a close would
    tell the old loop and leave the new one waiting."""
    handle = AsyncSysGenID.open(backend.path)
    try:
        backend_name, options = LOOPS[first]
        bumped: list[int] = []

        def bump_once_waited_on() -> None:
            _until(lambda: bool(handle.device._waiters), "a waiter")
            bumped.append(backend.bump())

        bumper = threading.Thread(target=bump_once_waited_on)
        bumper.start()
        got = anyio.run(_within_30_seconds, handle, backend=backend_name, backend_options=options)
        bumper.join(30)
        assert [got] == bumped, "the first loop waited, and was woken by the change"
        handle.ack(got)

        def close_once_waited_on() -> None:
            _until(lambda: bool(handle.device._waiters), "a waiter")
            handle.close()

        closer = threading.Thread(target=close_once_waited_on)
        closer.start()
        backend_name, options = LOOPS[second]
        with pytest.raises(DeviceClosedError):
            anyio.run(_within_30_seconds, handle, backend=backend_name, backend_options=options)
        closer.join(30)
    finally:
        handle.close()
    assert _released(handle.device)


def test_a_change_reaches_every_waiter(backend: Backend) -> None:
    """The registry wakes on a close; a change wakes every waiter by the fd itself."""
    handle = BlockingSysGenID.open(backend.path)
    seen: list[int | None] = []
    threads = [threading.Thread(target=lambda: seen.append(handle.wait_for_change(30))) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        _until(lambda: len(handle.device._waiters) == 3, "three threads waiting")
        new = backend.bump()
        for thread in threads:
            thread.join(30)
        assert seen == [new] * 3
        assert not handle.device._waiters and handle.device._in_flight == 0
    finally:
        handle.close()
    assert _released(handle.device)


@pytest.mark.anyio
async def test_a_second_task_on_one_handle_gets_a_library_error(backend: Backend, anyio_backend_name: str) -> None:
    """One task per loop may wait on a handle: a second gets ConcurrentWaitError (not the
    loop's own BusyResourceError), and the first is unaffected."""
    async with AsyncSysGenID.open(backend.path) as handle:
        seen: list[int] = []

        async def first() -> None:
            seen.append(await handle.wait_for_change())

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(first)
                while not handle.device._waiters:  # noqa: ASYNC110 - the registry has no event to wait on
                    await anyio.sleep(0.005)
                with pytest.raises(ConcurrentWaitError, match="one task per loop"):
                    await handle.wait_for_change()
                assert len(handle.device._waiters) == 1, "the refused task left nothing registered"
                new = await anyio.to_thread.run_sync(backend.bump)
        assert seen == [new]
        # What stays registered between waits: the loop's persistent reader on asyncio and
        # uvloop (until the close), nothing on trio.
        persistent = anyio_backend_name != "trio"
        assert len(handle.device._waiters) == handle.device._in_flight == int(persistent)
    assert _released(handle.device)


def test_a_loop_that_has_gone_does_not_hold_the_file(backend: Backend) -> None:
    """A task left waiting on a loop that was closed can never leave: the close lets go for it."""
    import asyncio

    handle = AsyncSysGenID.open(backend.path)
    loop = asyncio.new_event_loop()
    task = loop.create_task(handle.wait_for_change())
    loop.run_until_complete(asyncio.sleep(0.01))
    assert len(handle.device._waiters) == 1 and not task.done()
    loop.close()
    handle.close()
    assert _released(handle.device)
    assert backend.open_files() == 0
    del task


class _InterruptedError(Exception):
    pass


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")
def test_a_signal_handler_that_raises_leaves_the_registry_empty(backend: Backend) -> None:
    """A handler raising inside a blocked wait unwinds it: nothing stays registered, and the
    close that follows closes the file at once."""

    def interrupt(signum: int, frame: object) -> None:
        raise _InterruptedError

    previous = signal.signal(signal.SIGALRM, interrupt)
    handle = BlockingSysGenID.open(backend.path)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(_InterruptedError):
            handle.wait_for_change(30)
        assert not handle.device._waiters and handle.device._in_flight == 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        handle.close()
    assert _released(handle.device)


@pytest.mark.parametrize("wait", ["wait_for_change", "wait_watchers"])
def test_a_close_from_another_thread_ends_a_blocking_wait(backend: Backend, wait: str) -> None:
    """Both blocking waits: the poll for a change (woken through the registry's eventfd) and
    WAIT_WATCHERS (in slices of at most 50 ms, each of which sees the close)."""
    with Device.open(backend.path) as other:
        handle = BlockingSysGenID.open(backend.path)
        new = backend.bump()
        handle.ack(new)  # up to date, while `other` holds the watchers back: both waits block
        errors: list[BaseException] = []

        def run() -> None:
            try:
                getattr(handle, wait)(None)
            except BaseException as exc:
                errors.append(exc)

        waiter = threading.Thread(target=run)
        waiter.start()
        waiter.join(0.1)
        assert waiter.is_alive(), "the wait blocks"
        handle.close()
        handle.close()  # idempotent
        waiter.join(30)
        assert not waiter.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], DeviceClosedError), errors
        assert _released(handle.device) and handle.device._thread_wakeup == -1, "the file and the eventfd are closed"
        other.ack(new)


def test_a_closed_handle_refuses_new_waiters(backend: Backend) -> None:
    handle = BlockingSysGenID.open(backend.path)
    handle.close()
    with pytest.raises(DeviceClosedError):
        handle.wait_for_change(0.01)
    with pytest.raises(DeviceClosedError):
        handle.device.wait_readable(0)
    assert _released(handle.device)
