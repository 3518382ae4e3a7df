"""``watch()``: acknowledgement after the body, coalescing, and prompt release of the fd."""

from __future__ import annotations

import os

import anyio
import pytest

from backends import Backend
from sysgenid_async import DeviceNotFoundError, watch

pytestmark = pytest.mark.anyio


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_each_change_is_acknowledged_after_the_body(backend: Backend) -> None:
    seen: list[int] = []
    with anyio.fail_after(60):
        async with watch(backend.path) as changes:
            backend.bump()
            async for generation in changes:
                assert changes.handle.device.is_outdated(), "not acknowledged while the body runs"
                seen.append(generation)
                if len(seen) == 3:
                    break
                backend.bump()
            assert changes.handle.device.is_outdated(), "the last body did not finish: not acknowledged"
    assert len(seen) == 3 and len(set(seen)) == 3


async def test_an_error_in_the_body_leaves_the_generation_unacknowledged(backend: Backend) -> None:
    changes = watch(backend.path)
    backend.bump()
    with pytest.raises(RuntimeError, match="rebuild failed"):
        async for _ in changes:
            raise RuntimeError("rebuild failed")
    assert changes.handle.device.is_outdated()
    changes.close()


async def test_changes_that_pile_up_coalesce(backend: Backend) -> None:
    seen: list[int] = []
    with anyio.fail_after(60):
        async with watch(backend.path) as changes:
            backend.bump()
            async for generation in changes:
                seen.append(generation)
                if len(seen) == 1:
                    backend.bump()
                    backend.bump()
                    latest = backend.bump()
                else:
                    break
    assert seen[1] == latest
    assert len(seen) == 2


async def test_breaking_out_releases_the_fd(backend: Backend) -> None:
    loops = 1000
    before = open_fds()
    with anyio.fail_after(600):
        for _ in range(loops):
            iterator = watch(backend.path)
            backend.bump()
            async for _generation in iterator:
                break
            del iterator
    assert open_fds() == before


async def bump_soon(backend: Backend) -> None:
    await anyio.sleep(0.05)
    backend.bump()


async def test_a_plain_async_for_releases_the_fd_on_break(backend: Backend) -> None:
    before = open_fds()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(bump_soon, backend)
            async for _generation in watch(backend.path):
                assert open_fds() > before
                break
    assert open_fds() == before


async def test_an_exception_or_cancel_releases_the_fd(backend: Backend) -> None:
    before = open_fds()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(bump_soon, backend)
            with pytest.raises(KeyError):
                async for _generation in watch(backend.path):
                    raise KeyError
    assert open_fds() == before
    with anyio.move_on_after(0.05):
        async for _generation in watch(backend.path):
            pass
    assert open_fds() == before


async def test_closing_ends_the_iteration(backend: Backend) -> None:
    changes = watch(backend.path)
    seen: list[int] = []

    async def consume() -> None:
        async for generation in changes:
            seen.append(generation)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(consume)
            await anyio.sleep(0.05)
            await changes.aclose()
    assert seen == []
    with pytest.raises(StopAsyncIteration):
        await changes.__anext__()


async def test_without_ack_changes_are_reported_but_never_acknowledged(backend: Backend) -> None:
    seen: list[int] = []
    with anyio.fail_after(60):
        async with watch(backend.path, ack=False) as changes:
            backend.bump()
            async for generation in changes:
                seen.append(generation)
                if len(seen) == 2:
                    break
                first = changes.handle
                assert first.device.is_outdated()
                backend.bump()
    # the first file was closed outdated, never acknowledged: it was replaced, not acked
    assert first.closed
    assert seen[1] != seen[0]


async def test_a_missing_device_fails_at_the_start() -> None:
    with pytest.raises(DeviceNotFoundError):
        async with watch("/nonexistent/sysgenid"):
            pass
    with pytest.raises(TypeError):
        watch("/nonexistent/sysgenid", ack="no")  # type: ignore[arg-type]
