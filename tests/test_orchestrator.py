"""The orchestrator, with watchers in other processes (threads on the simulator)."""

from __future__ import annotations

import anyio
import pytest

from backends import Backend, Peer, Worker
from sysgenid_async import Abi, WaitResult
from sysgenid_async.restore import Orchestrator

pytestmark = pytest.mark.anyio


async def test_everyone_catches_up(backend: Backend) -> None:
    peers: list[Peer] = [backend.peer(), backend.peer()]
    events: list[tuple[str, int]] = []

    async def pause(generation: int) -> None:
        events.append(("pause", generation))
        for peer in peers:  # the other services handle the change meanwhile
            await anyio.to_thread.run_sync(peer.ack)

    try:
        async with Orchestrator(backend.path, timeout=30, pause=pause,
                                resume=lambda g: events.append(("resume", g))) as orchestrator:
            new = backend.bump()
            with anyio.fail_after(60):
                report = await orchestrator.handle_next()
    finally:
        for peer in peers:
            peer.close()
    assert report.generation == new and report.caught_up and report.restarts == 0
    assert report.late_watchers == (0 if backend.abi is Abi.V4 else None)
    assert events == [("pause", new), ("resume", new)]


async def test_a_late_watcher_is_reported(backend: Backend) -> None:
    late = backend.peer()
    try:
        async with Orchestrator(backend.path, timeout=0.2) as orchestrator:
            new = backend.bump()
            with anyio.fail_after(60):
                report = await orchestrator.handle_next()
    finally:
        late.close()
    assert report.generation == new and report.result is WaitResult.TIMED_OUT
    assert report.late_watchers == (1 if backend.abi is Abi.V4 else None)


async def test_a_newer_generation_during_the_wait_starts_over(backend: Backend) -> None:
    peer = backend.peer()
    bumped: list[int] = []

    async def bump_then_let_the_peer_catch_up() -> None:
        await anyio.sleep(0.2)
        bumped.append(backend.bump())
        await anyio.sleep(0.2)
        await anyio.to_thread.run_sync(peer.ack)

    try:
        async with Orchestrator(backend.path, timeout=30) as orchestrator:
            backend.bump()
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(bump_then_let_the_peer_catch_up)
                    report = await orchestrator.handle_next()
    finally:
        peer.close()
    assert report.restarts >= 1 and report.generation == bumped[0] and report.caught_up


async def test_cancelling_the_orchestrator(backend: Backend) -> None:
    late = backend.peer()
    try:
        async with Orchestrator(backend.path, timeout=None) as orchestrator:
            backend.bump()
            with anyio.move_on_after(0.2) as scope:
                async for _report in orchestrator:
                    pytest.fail("nobody caught up")
            assert scope.cancelled_caught
    finally:
        late.close()
    with pytest.raises(RuntimeError, match="async with"):
        orchestrator.handle  # noqa: B018


async def test_services_with_their_own_hooks(backend: Backend) -> None:
    """Three service processes, one slow and one failing: the orchestrator sees the failure."""
    workers: list[Worker] = []
    try:
        for behaviour in ("ok", "slow", "fail"):
            workers.append(backend.worker(behaviour))
        for worker in workers:
            await anyio.to_thread.run_sync(worker.wait_for, "ready")
        async with Orchestrator(backend.path, timeout=3) as orchestrator:
            new = backend.bump()
            with anyio.fail_after(120):
                report = await orchestrator.handle_next()
        for worker in workers:
            await anyio.to_thread.run_sync(worker.wait_for, f"ran {new}")
    finally:
        for worker in workers:
            await anyio.to_thread.run_sync(worker.close)
    assert report.generation == new
    assert report.result is WaitResult.TIMED_OUT, "the failing service never acknowledged"
    assert report.late_watchers == (1 if backend.abi is Abi.V4 else None)
