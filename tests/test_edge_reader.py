"""The persistent reader of asyncio and uvloop (sysgenid_async.edge_reader): one per handle and
loop, registered from the first wait to the close; the loop hears of each change once, and never
while ``watch()``'s body runs with the file still unacknowledged."""

from __future__ import annotations

import asyncio
import os
import warnings

import anyio
import anyio.lowlevel
import pytest

from backends import Backend
from sysgenid_async import AsyncSysGenID, watch
from sysgenid_async.edge_reader import EdgeReader

#: The persistent reader is asyncio's and uvloop's; trio keeps wait_readable.
asyncio_loops = pytest.mark.parametrize(
    "anyio_backend", [pytest.param(("asyncio", {}), id="asyncio"),
                      pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")],
)


@pytest.fixture
def edges(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every call of a reader's loop callback, counted (readers made from now on)."""
    calls: list[int] = []
    original = EdgeReader._on_edge

    def counted(self: EdgeReader) -> None:
        calls.append(1)
        original(self)

    monkeypatch.setattr(EdgeReader, "_on_edge", counted)
    return calls


def _readers(handle: AsyncSysGenID) -> list[EdgeReader]:
    return [waiter for waiter in handle.device.waiters() if type(waiter) is EdgeReader]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _change_during_a_wait(handle: AsyncSysGenID, backend: Backend) -> int:
    """Bump while a task waits (so the wait goes through the loop's reader, not the page hint);
    returns what the wait returned, acknowledged, after checking it is the new generation."""
    got: list[int] = []

    async def wait() -> None:
        got.append(await handle.wait_for_change())

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            new = await anyio.to_thread.run_sync(backend.bump)
    assert got == [new]
    handle.ack(new)
    return new


@pytest.mark.anyio
@asyncio_loops
async def test_the_loop_hears_once_per_change_and_never_during_the_body(backend: Backend, edges: list[int]) -> None:
    """A level-triggered reader left registered would fire on every loop iteration of the body
    (the file is readable until the acknowledgement); this one fires once per change."""
    seen: list[int] = []
    bumped: list[int] = []
    with anyio.fail_after(30):
        async with watch(backend.path) as changes, anyio.create_task_group() as tasks:

            async def follow() -> None:
                async for generation in changes:
                    seen.append(generation)
                    for _ in range(50):  # the body yields to the loop often, unacknowledged
                        await anyio.lowlevel.checkpoint()
                    if len(seen) == 3:
                        return

            tasks.start_soon(follow)
            for _ in range(3):
                await anyio.wait_all_tasks_blocked()  # the watcher waits through its reader
                bumped.append(await anyio.to_thread.run_sync(backend.bump))
    assert seen == bumped
    assert len(edges) == 3, f"the reader fired {len(edges)} times for three changes"


@pytest.mark.anyio
@asyncio_loops
async def test_one_reader_for_many_waits_and_none_after_close(backend: Backend) -> None:
    handle = AsyncSysGenID.open(backend.path)
    try:
        for _ in range(3):
            await _change_during_a_wait(handle, backend)
        fds = _open_fds()
        for _ in range(20):
            await _change_during_a_wait(handle, backend)
        assert _open_fds() == fds, "a wait left a descriptor behind"
        assert len(_readers(handle)) == 1
        reader = _readers(handle)[0]
        assert reader.loop is asyncio.get_running_loop()
    finally:
        handle.close()
    assert reader._epoll.closed and not handle.device.waiters()
    assert backend.open_files() == 0


@pytest.mark.anyio
@asyncio_loops
async def test_an_edge_that_came_while_nobody_waited_is_not_lost_and_not_a_change(backend: Backend) -> None:
    """A change between two waits leaves the reader a spare edge: the next wait reads at once;
    once read, the spare edge alone returns nothing, and the wait goes on to the next change."""
    async with AsyncSysGenID.open(backend.path) as handle:
        await _change_during_a_wait(handle, backend)
        with anyio.fail_after(30):
            second = await anyio.to_thread.run_sync(backend.bump)  # nobody waits: the edge is kept
            await anyio.sleep(0.05)  # the reader's callback runs meanwhile
            assert _readers(handle)[0]._pending
            handle.device.acknowledged = second  # hide the change from the page hint: only the edge tells
            assert await handle.wait_for_change() == second
            handle.ack(second)
            with anyio.move_on_after(0.2) as waited:
                await handle.wait_for_change()
            assert waited.cancelled_caught, "a wait returned with no change"
            third = await anyio.to_thread.run_sync(backend.bump)
            assert await handle.wait_for_change() == third


def test_a_handle_on_successive_loops_keeps_one_reader(backend: Backend) -> None:
    """asyncio.run after asyncio.run on one handle: each new loop's first wait lets go of the
    reader of the loop closed before it (its descriptor too)."""
    handle = AsyncSysGenID.open(backend.path)
    try:
        async def one_wait() -> None:
            await _change_during_a_wait(handle, backend)

        asyncio.run(one_wait())
        fds = _open_fds()
        for _ in range(5):
            asyncio.run(one_wait())
        assert len(_readers(handle)) == 1
        assert _open_fds() == fds
    finally:
        handle.close()
    assert not handle.device.waiters() and backend.open_files() == 0


@pytest.mark.anyio
@asyncio_loops
async def test_a_close_from_another_thread_wakes_the_task(backend: Backend) -> None:
    handle = AsyncSysGenID.open(backend.path)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            outcome: list[str] = []

            async def wait() -> None:
                try:
                    await handle.wait_for_change()
                except Exception as exc:
                    outcome.append(type(exc).__name__)

            tasks.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            await anyio.to_thread.run_sync(handle.close)
    assert outcome == ["DeviceClosedError"]
    assert not handle.device.waiters() and backend.open_files() == 0


@pytest.mark.kernel_only
@pytest.mark.anyio
@asyncio_loops
async def test_a_forked_child_lets_go_of_the_readers_instance(backend: Backend) -> None:
    """The child's copy of the private epoll instance is the parent's instance: the fork
    handler closes it in the child, and the parent's reader goes on working."""
    async with AsyncSysGenID.open(backend.path) as handle:
        await _change_during_a_wait(handle, backend)
        epoll_fd = _readers(handle)[0]._epoll.fileno()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: we exec nothing
            pid = os.fork()
        if pid == 0:
            try:
                os.fstat(epoll_fd)
            except OSError:
                os._exit(0)
            os._exit(1)
        _, status = await anyio.to_thread.run_sync(os.waitpid, pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the child kept the reader's epoll instance"
        await _change_during_a_wait(handle, backend)
