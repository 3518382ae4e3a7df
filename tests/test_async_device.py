"""The async handle on asyncio, uvloop and trio, on every device backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable

import anyio
import pytest

from backends import Backend
from sysgenid_async import AsyncSysGenID, DeviceClosedError, WaitResult, open_sysgenid

pytestmark = pytest.mark.anyio


async def test_wait_for_change_returns_at_once_when_behind(backend: Backend) -> None:
    async with open_sysgenid(backend.path) as handle:
        new = backend.bump()
        with anyio.fail_after(30):
            assert await handle.wait_for_change() == new
        assert await handle.wait_for_change() == new, "still unacknowledged"
        handle.ack(new)
        assert handle.generation == new


async def test_wait_for_change_wakes_on_a_change(backend: Backend) -> None:
    async with open_sysgenid(backend.path) as handle:
        seen: list[int] = []

        async def waiter() -> None:
            seen.append(await handle.wait_for_change())

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(waiter)
                await anyio.sleep(0.05)
                assert not seen
                new = await anyio.to_thread.run_sync(backend.bump)
        assert seen == [new]
        assert handle.generation == new


async def test_the_handle_describes_itself(backend: Backend) -> None:
    async with open_sysgenid(backend.path, abi=backend.abi.value) as handle:
        assert handle.abi is backend.abi
        assert handle.path == backend.path
        assert handle.watcher
        assert "AsyncSysGenID" in repr(handle)
    assert handle.closed


async def close_in_this_task(handle: AsyncSysGenID) -> None:
    handle.close()
    handle.close()  # idempotent


async def close_from_another_thread(handle: AsyncSysGenID) -> None:
    closer = threading.Thread(target=handle.close)
    closer.start()
    await anyio.to_thread.run_sync(closer.join)


@pytest.mark.parametrize("close", [close_in_this_task, close_from_another_thread])
async def test_close_ends_a_wait(backend: Backend, close: Callable[[AsyncSysGenID], Awaitable[None]]) -> None:
    handle = AsyncSysGenID.open(backend.path)
    errors: list[BaseException] = []

    async def waiter() -> None:
        try:
            await handle.wait_for_change()
        except DeviceClosedError as exc:
            errors.append(exc)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(waiter)
            await anyio.sleep(0.05)
            await close(handle)
    assert len(errors) == 1, "the waiter got DeviceClosedError, not a hang and not EBADF"
    with pytest.raises(DeviceClosedError):
        handle.ack(0)


async def test_a_cancelled_wait_leaves_the_handle_usable(backend: Backend) -> None:
    async with open_sysgenid(backend.path) as handle:
        with anyio.move_on_after(0.05) as scope:
            await handle.wait_for_change()
        assert scope.cancelled_caught
        new = backend.bump()
        with anyio.fail_after(30):
            assert await handle.wait_for_change() == new
        handle.ack(new)


async def test_wait_watchers_outcomes(backend: Backend) -> None:
    async with open_sysgenid(backend.path) as handle, open_sysgenid(backend.path) as other:
        assert await handle.wait_watchers(0) is WaitResult.CAUGHT_UP
        new = backend.bump()
        with anyio.fail_after(60):
            assert await handle.wait_watchers() is WaitResult.CALLER_OUTDATED
        handle.ack(new)
        assert await handle.wait_watchers(0.05) is WaitResult.TIMED_OUT
        other.ack(new)
        assert await handle.wait_watchers(5) is WaitResult.CAUGHT_UP


async def test_wait_watchers_returns_when_the_last_one_acks(backend: Backend) -> None:
    async with open_sysgenid(backend.path) as handle, open_sysgenid(backend.path) as other:
        new = backend.bump()
        handle.ack(new)
        results: list[WaitResult] = []

        async def orchestrator() -> None:
            results.append(await handle.wait_watchers(60))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(orchestrator)
                await anyio.sleep(0.1)
                assert not results
                other.ack(new)
        assert results == [WaitResult.CAUGHT_UP]


async def test_wait_watchers_can_be_cancelled(backend: Backend) -> None:
    async with open_sysgenid(backend.path) as handle, open_sysgenid(backend.path) as other:
        new = backend.bump()
        handle.ack(new)
        started = time.monotonic()
        with anyio.move_on_after(0.1) as scope:
            await handle.wait_watchers()  # no timeout: only the cancel ends it
        assert scope.cancelled_caught
        # The design bound is one 50 ms slice; this only catches a wait that ignores cancels.
        assert time.monotonic() - started < 10
        other.ack(new)


async def test_trigger_through_the_handle(backend: Backend) -> None:
    async with open_sysgenid(backend.path) as handle:
        before = handle.generation
        after = handle.trigger()
        assert after == (before + 1) % 2**32
        assert await handle.wait_for_change() == after
        handle.ack(after)


async def test_aclose(backend: Backend) -> None:
    handle = AsyncSysGenID.open(backend.path)
    await handle.aclose()
    await handle.aclose()
    assert handle.closed
    with pytest.raises(DeviceClosedError):
        await handle.wait_for_change()
