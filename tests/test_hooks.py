"""The restore-hook registry: order, errors, timeouts, weak references."""

from __future__ import annotations

import gc
import logging
import sys
import threading

import anyio
import pytest

from sysgenid_async.restore import HookError, Phase, RestoreHooks, RestoreHooksError

pytestmark = pytest.mark.anyio


async def test_hooks_run_by_phase_then_priority_then_registration() -> None:
    hooks = RestoreHooks()
    calls: list[tuple[str, int]] = []

    @hooks.register
    def default_first(generation: int) -> None:
        calls.append(("default_first", generation))

    @hooks.register(phase=Phase.CONNECTIONS)
    async def connections(generation: int) -> None:
        calls.append(("connections", generation))

    @hooks.register(phase=Phase.RESEED)
    def reseed(generation: int) -> None:
        calls.append(("reseed", generation))

    def default_second(generation: int) -> None:
        calls.append(("default_second", generation))

    assert hooks.register(default_second) is default_second, "a plain call returns the function"
    hooks.register(lambda g: calls.append(("very_first", g)), priority=1, name="very_first")
    assert hooks.hooks[0].name == "very_first"
    await hooks.run(7)
    assert calls == [
        ("very_first", 7), ("reseed", 7), ("connections", 7), ("default_first", 7), ("default_second", 7),
    ]
    assert len(hooks) == 5


async def test_unregister() -> None:
    hooks = RestoreHooks()
    calls: list[int] = []

    def hook(generation: int) -> None:
        calls.append(generation)

    hooks.register(hook)
    assert hooks.unregister(hook)
    assert not hooks.unregister(hook)
    await hooks.run(1)
    assert calls == []
    hooks.register(hook)
    hooks.clear()
    assert len(hooks) == 0


async def test_a_failed_phase_runs_whole_and_stops_the_pass(caplog: pytest.LogCaptureFixture) -> None:
    """Failures in one phase are gathered; no later phase runs on top of a failed one."""
    hooks = RestoreHooks()
    ran: list[str] = []

    @hooks.register(phase=Phase.IDENTITIES)
    def broken(generation: int) -> None:
        ran.append("broken")
        raise ValueError("no entropy")

    @hooks.register(phase=Phase.IDENTITIES)
    async def also_broken(generation: int) -> None:
        ran.append("also_broken")
        raise KeyError("gone")

    @hooks.register(phase=Phase.RESEED)
    def first(generation: int) -> None:
        ran.append("first")

    @hooks.register(phase=Phase.CACHES)
    def later(generation: int) -> None:
        ran.append("later")

    logger = "sysgenid_async.restore.hooks"
    with caplog.at_level(logging.ERROR, logger=logger), pytest.raises(RestoreHooksError) as caught:
        await hooks.run(3)
    assert ran == ["first", "broken", "also_broken"], "the whole failed phase ran, and nothing after it"
    group = caught.value
    assert group.generation == 3 and [h.name for h in group.hooks] == ["broken", "also_broken"]
    assert all(isinstance(e, HookError) for e in group.exceptions)
    assert isinstance(group.exceptions[0].__cause__, ValueError)
    assert "restore hook broken raised ValueError('no entropy') for generation 3" in caplog.text
    assert "also_broken" in caplog.text


async def test_timeouts(caplog: pytest.LogCaptureFixture) -> None:
    hooks = RestoreHooks()
    release = threading.Event()
    after: list[int] = []

    @hooks.register(timeout=0.05)
    async def hangs(generation: int) -> None:
        await anyio.sleep_forever()

    @hooks.register(timeout=0.05)
    def blocks(generation: int) -> None:
        release.wait(30)

    @hooks.register(timeout=5)
    def quick(generation: int) -> None:
        after.append(generation)

    with anyio.fail_after(30), pytest.raises(RestoreHooksError) as caught:
        await hooks.run(9)
    release.set()
    assert [h.name for h in caught.value.hooks] == ["hangs", "blocks"]
    assert all(isinstance(e.__cause__, TimeoutError) for e in caught.value.exceptions)
    assert "timed out" in str(caught.value.exceptions[0])
    assert after == [9]


async def test_weak_hooks_vanish_with_their_object() -> None:
    hooks = RestoreHooks()
    calls: list[int] = []

    class Resource:
        def after_restore(self, generation: int) -> None:
            calls.append(generation)

    resource = Resource()
    hooks.register(resource.after_restore, weak=True)
    await hooks.run(1)
    assert calls == [1]
    del resource
    gc.collect()
    await hooks.run(2)
    assert calls == [1] and len(hooks) == 0


async def test_a_cancel_is_not_a_failure() -> None:
    hooks = RestoreHooks()

    @hooks.register
    async def slow(generation: int) -> None:
        await anyio.sleep_forever()

    with anyio.move_on_after(0.05) as scope:
        await hooks.run(1)
    assert scope.cancelled_caught


def test_bad_registrations() -> None:
    hooks = RestoreHooks()
    with pytest.raises(TypeError, match="callable"):
        hooks.register(42)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="timeout"):
        hooks.register(print, timeout=0)
    with pytest.raises(ValueError, match="timeout"):
        hooks.register(print, timeout=-1)
    with pytest.raises(TypeError, match="phase"):
        hooks.register(print, phase=3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="priority"):
        hooks.register(print, priority="high")  # type: ignore[call-overload]
    assert len(hooks) == 0


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio has no Task.cancelling() before 3.11: there a "
                    "task.cancel() that lands in an async hook counts as that hook's failure (docs/design.md)")
def test_a_native_cancel_of_the_caller_is_not_a_hook_failure() -> None:
    """``task.cancel()`` on asyncio reaches a hook as a CancelledError that no anyio scope
    knows of: the pass must stop and the cancel go on, not be recorded as the hook's failure
    (asyncio's ``Task.cancelling()`` is how the runner tells the two apart)."""
    import asyncio

    hooks = RestoreHooks()
    after: list[int] = []

    async def main() -> None:
        started = asyncio.Event()

        @hooks.register
        async def slow(generation: int) -> None:
            started.set()
            await asyncio.sleep(30)

        @hooks.register
        def later(generation: int) -> None:
            after.append(generation)

        task = asyncio.ensure_future(hooks.run(1))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert after == [], "the pass stopped at the cancel"
