"""The process restore watcher: one kernel watcher, hooks and subscribers, ack when all are done."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable

import anyio
import pytest

from backends import Backend
from sysgenid_async.device import Device
from sysgenid_async.restore import RestoreHooks, RestoreWatcher, RetryPolicy, restore_watcher

pytestmark = pytest.mark.anyio

FAST_RETRY = RetryPolicy(initial_delay=0.02, max_delay=0.05)


async def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Wait for a state the watcher reaches in the background (it exposes no event)."""
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)


def outdated(watcher: RestoreWatcher) -> bool:
    return watcher.handle.is_outdated()


async def test_hooks_run_once_per_change_then_the_generation_is_acknowledged(backend: Backend) -> None:
    hooks = RestoreHooks()
    seen: list[int] = []
    hooks.register(seen.append)  # registered before the watcher starts: still runs
    async with restore_watcher(backend.path, hooks=hooks) as watcher:
        assert backend.open_files() == 1, "one kernel watcher for the process"
        first = backend.bump()
        await until(lambda: watcher.acknowledged == first)
        assert seen == [first] and not outdated(watcher)
        second = backend.bump()
        await until(lambda: watcher.acknowledged == second)
        assert seen == [first, second]
        assert watcher.generation == second


async def test_a_failing_hook_holds_the_ack_until_a_retry_succeeds(backend: Backend) -> None:
    hooks = RestoreHooks()
    attempts: list[int] = []
    others: list[int] = []

    @hooks.register
    def flaky(generation: int) -> None:
        attempts.append(generation)
        if len(attempts) < 3:
            raise OSError("the secrets service is not up yet")

    hooks.register(others.append)
    async with restore_watcher(backend.path, hooks=hooks, retry=FAST_RETRY) as watcher:
        new = backend.bump()
        await until(lambda: len(attempts) >= 1)
        assert outdated(watcher) or watcher.acknowledged == new
        await until(lambda: watcher.acknowledged == new)
        assert attempts == [new, new, new], "retried until it succeeded"
        assert others == [new, new, new], "the failed hook's whole phase runs again"
        assert watcher.last_error is None


async def test_a_hook_that_keeps_failing_leaves_the_process_outdated(backend: Backend) -> None:
    hooks = RestoreHooks()
    calls: list[int] = []

    @hooks.register
    def broken(generation: int) -> None:
        calls.append(generation)
        if len(calls) == 1:
            raise RuntimeError("cannot rebuild")

    async with restore_watcher(backend.path, hooks=hooks, retry=RetryPolicy(max_attempts=0)) as watcher:
        failed = backend.bump()
        await until(lambda: watcher.last_error is not None)
        assert outdated(watcher) and watcher.acknowledged is None
        assert watcher.last_error is not None and watcher.last_error.generation == failed
        # the next generation runs every hook again, and this time they succeed
        recovered = backend.bump()
        await until(lambda: watcher.acknowledged == recovered)
        assert calls == [failed, recovered]


async def test_subscribers_must_finish_before_the_ack(backend: Backend) -> None:
    async with restore_watcher(backend.path, hooks=RestoreHooks()) as watcher:
        fast, slow = watcher.subscribe(), watcher.subscribe()
        release = anyio.Event()
        got: dict[str, list[int]] = {"fast": [], "slow": []}

        async def consume(name: str, subscription: object, body: Callable[[], Awaitable[None]]) -> None:
            async for generation in subscription:  # type: ignore[attr-defined]
                got[name].append(generation)
                await body()

        async def nothing() -> None:
            pass

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(consume, "fast", fast, nothing)
            tasks.start_soon(consume, "slow", slow, release.wait)
            new = backend.bump()
            await until(lambda: got["fast"] == [new] and got["slow"] == [new])
            await anyio.sleep(0.1)
            assert outdated(watcher), "the slow subscriber has not finished its body"
            release.set()
            await until(lambda: watcher.acknowledged == new)
            fast.close()
            slow.close()


async def test_a_subscriber_that_stops_is_no_longer_waited_for(backend: Backend) -> None:
    async with restore_watcher(backend.path, hooks=RestoreHooks()) as watcher:

        async def bump_soon() -> None:
            await anyio.sleep(0.05)
            backend.bump()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(bump_soon)
            with pytest.raises(RuntimeError, match="could not rebuild"):
                async for _generation in watcher.subscribe():
                    raise RuntimeError("could not rebuild")
        await until(lambda: watcher.acknowledged is not None)
        assert not outdated(watcher), "like a closed file, a stopped subscriber does not count"


async def test_many_subscribers_each_counted_once_per_offer(backend: Backend) -> None:
    """Subscribers wait on one shared event and the watcher counts what they owe: a hundred
    loops, one still busy with the last generation when the next is offered (it owes the
    newer one), one closed from another task while it waits, one that subscribes after the
    offer (not waited for)."""
    async with restore_watcher(backend.path, hooks=RestoreHooks()) as watcher:
        subscriptions = [watcher.subscribe() for _ in range(100)]
        seen: list[list[int]] = [[] for _ in subscriptions]
        release = anyio.Event()

        async def consume(index: int) -> None:
            async for generation in subscriptions[index]:
                seen[index].append(generation)
                if index == 0 and len(seen[0]) == 1:
                    await release.wait()  # still on the first generation when the second comes

        async with anyio.create_task_group() as tasks:
            for index in range(len(subscriptions)):
                tasks.start_soon(consume, index)
            first = backend.bump()
            await until(lambda: all(len(got) == 1 for got in seen))
            second = backend.bump()
            await until(lambda: all(len(got) == 2 for got in seen[1:]))
            assert outdated(watcher), "the first subscriber still owes the second generation"
            subscriptions[1].close()  # waiting for an offer: its loop ends
            late = watcher.subscribe()  # after the offer: not waited for
            release.set()
            await until(lambda: len(seen[0]) == 2)
            await until(lambda: watcher.acknowledged == second)
            assert seen[0] == seen[2] == [first, second]
            for subscription in subscriptions:
                subscription.close()
            late.close()
        assert all(len(got) == 2 for got in seen), "every loop ended when its subscription closed"


async def test_a_dropped_subscription_is_not_waited_for(backend: Backend) -> None:
    """A subscription no one holds any more (its loop gave it up without closing it) is freed,
    and so closed: the watcher does not wait for it."""
    import gc

    async with restore_watcher(backend.path, hooks=RestoreHooks()) as watcher:
        dropped = watcher.subscribe()
        new = backend.bump()
        with anyio.fail_after(30):
            async for generation in dropped:
                assert generation == new
                break  # handed the generation, and gone before the next iteration: it owes it
        await anyio.sleep(0.05)
        assert outdated(watcher), "the subscriber still owes the generation"
        del dropped
        gc.collect()
        await until(lambda: watcher.acknowledged == new)


async def test_watcher_states(backend: Backend) -> None:
    watcher = RestoreWatcher(backend.path, hooks=RestoreHooks())
    with pytest.raises(RuntimeError, match="not running"):
        watcher.generation  # noqa: B018
    async with anyio.create_task_group() as tasks:
        started = await tasks.start(watcher.run)
        assert started is watcher
        with Device.open(backend.path, watcher=False) as probe:
            assert watcher.generation == probe.generation
        tasks.cancel_scope.cancel()
    with pytest.raises(RuntimeError, match="not running"):
        watcher.handle  # noqa: B018


@pytest.mark.parametrize(
    "arguments",
    [{"initial_delay": 0}, {"initial_delay": 5, "max_delay": 1}, {"factor": 0.5}, {"max_attempts": -1}],
)
def test_bad_retry_policies(arguments: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="RetryPolicy needs"):
        RetryPolicy(**arguments)  # type: ignore[arg-type]


async def test_a_missing_device_fails_at_the_start_and_leaves_nothing() -> None:
    from sysgenid_async import DeviceNotFoundError
    from sysgenid_async.restore import Orchestrator

    threads = set(threading.enumerate())  # which, not how many: an earlier test's may end meanwhile
    with pytest.raises(DeviceNotFoundError):
        async with restore_watcher("/nonexistent/sysgenid", hooks=RestoreHooks()):
            pytest.fail("started without a device")
    with pytest.raises(DeviceNotFoundError):
        async with Orchestrator("/nonexistent/sysgenid"):
            pytest.fail("started without a device")
    with pytest.raises(ValueError, match="timeout"):
        Orchestrator(timeout=-1)
    assert set(threading.enumerate()) <= threads
