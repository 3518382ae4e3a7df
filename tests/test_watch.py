"""``watch()``: acknowledgement after the body, coalescing, and prompt release of the fd."""

from __future__ import annotations

import gc
import os

import anyio
import pytest

from backends import Backend
from sysgenid_async import DeviceNotFoundError, watch
from sysgenid_async.device import Device

pytestmark = pytest.mark.anyio


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_each_change_is_acknowledged_after_the_body(backend: Backend) -> None:
    seen: list[int] = []
    with anyio.fail_after(60):
        async with watch(backend.path) as changes:
            backend.bump()
            async for generation in changes:
                assert changes.handle.is_outdated(), "not acknowledged while the body runs"
                seen.append(generation)
                if len(seen) == 3:
                    break
                backend.bump()
            assert changes.handle.is_outdated(), "the last body did not finish: not acknowledged"
    assert len(seen) == 3 and len(set(seen)) == 3


async def test_an_error_in_the_body_leaves_the_generation_unacknowledged(backend: Backend) -> None:
    changes = watch(backend.path)
    backend.bump()
    with pytest.raises(RuntimeError, match="rebuild failed"):
        async for _ in changes:
            raise RuntimeError("rebuild failed")
    assert changes.handle.is_outdated()
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


async def test_breaking_out_of_the_block_releases_the_fd(backend: Backend) -> None:
    loops = 1000
    before = open_fds()
    with anyio.fail_after(600):
        for _ in range(loops):
            async with watch(backend.path) as changes:
                backend.bump()
                async for _generation in changes:
                    break
    assert open_fds() == before


async def bump_soon(backend: Backend) -> None:
    await anyio.sleep(0.05)
    backend.bump()


async def test_a_watch_left_to_the_garbage_collector_warns(backend: Backend) -> None:
    """Closing is explicit: a watch nobody closed is closed by the collector, with a warning."""
    before = open_fds()

    def leave_one_unclosed() -> None:
        changes = watch(backend.path)
        assert open_fds() > before
        del changes
        gc.collect()

    with pytest.warns(ResourceWarning, match="was not closed"):
        leave_one_unclosed()
    assert open_fds() == before


async def test_an_exception_or_cancel_releases_the_fd(backend: Backend) -> None:
    before = open_fds()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(bump_soon, backend)
            with pytest.raises(KeyError):
                async with watch(backend.path) as changes:
                    async for _generation in changes:
                        raise KeyError
    assert open_fds() == before
    cancelled = watch(backend.path)
    with anyio.move_on_after(0.05):
        async for _generation in cancelled:  # a cancel reaching the iteration closes it at once
            pass
    assert cancelled._closed
    assert open_fds() == before


async def test_a_failed_body_is_delivered_again_on_reentry(backend: Backend) -> None:
    """Re-entering a watch after a failed body never acknowledges the failed generation."""
    peers_outdated = backend.abi.value == "v4"
    with anyio.fail_after(60):
        async with watch(backend.path) as changes:
            generation = backend.bump()
            with pytest.raises(RuntimeError):
                async for seen in changes:  # noqa: B007 - checked after the loop
                    raise RuntimeError("rebuild failed")
            assert seen == generation
            assert changes.handle.is_outdated(), "the failed generation is not acknowledged"
            async for again in changes:
                assert again == generation, "the failed generation is delivered again"
                assert changes.handle.is_outdated()
                break
            # The second body finished and the block exits cleanly: acknowledged.
        if peers_outdated:
            with Device.open(backend.path, watcher=False) as probe:
                assert probe.outdated_watchers() == 0


async def test_a_clean_exit_acknowledges_and_an_error_does_not(backend: Backend) -> None:
    with anyio.fail_after(60):
        async with watch(backend.path) as changes:
            backend.bump()
            async for _generation in changes:
                break
            device = changes.handle
            assert device.is_outdated()
            changes.acknowledge()
            assert not device.is_outdated()
        with pytest.raises(KeyError):
            async with watch(backend.path) as failing:
                backend.bump()
                async for _generation in failing:
                    break
                held = failing.handle
                raise KeyError
        assert held.closed and held.acknowledged != backend.generation


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
                # No file is open while the body runs: nothing holds an orchestrator back.
                assert backend.open_files() == 0
                if len(seen) == 2:
                    break
                backend.bump()
    assert seen[1] != seen[0]
    assert backend.open_files() == 0


async def test_a_missing_device_fails_at_the_start() -> None:
    with pytest.raises(DeviceNotFoundError):
        async with watch("/nonexistent/sysgenid"):
            pass
    with pytest.raises(TypeError):
        watch("/nonexistent/sysgenid", ack="no")  # type: ignore[arg-type]
