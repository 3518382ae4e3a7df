"""Restore safety: after a generation change, nothing built through the library carries
state from before it, whatever the order of requests, hooks, retries and tests.

Each test names the case it covers (issue 11's list); each failed on the code before the
restore gate. Cases 4 and 9 run on the kernel device too (test_fork.py, test_bound.py,
test_watch.py).
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from backends import Backend
from sysgenid_async.device import Device
from sysgenid_async.errors import SimulatorProcessError
from sysgenid_async.integrations import Reopenable
from sysgenid_async.restore import (
    AsyncGenerationBound,
    GenerationBound,
    HookKind,
    Phase,
    RestoreHooks,
    RestorePendingError,
    RestoreWatcherRunningError,
    RetryPolicy,
    generation_bound,
    on_before_snapshot,
    on_restore,
    on_resume,
    restore_hooks,
    restore_watcher,
    restored,
)
from sysgenid_async.restore.reseed import install_default_hooks
from sysgenid_async.testing import SimulatedDevice, isolated_state

FAST_RETRY = RetryPolicy(initial_delay=0.02, max_delay=0.05)


async def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - the watcher exposes no event
            await anyio.sleep(0.01)


def stale_draw(state: object) -> int:
    """What ``random.getrandbits(64)`` gives from ``state``: what every clone would draw."""
    clone = random.Random()
    clone.setstate(state)  # type: ignore[arg-type]
    return clone.getrandbits(64)


# -- case 1: a request between the restore and the RESEED hook -------------------------------


@pytest.mark.anyio
async def test_a_request_racing_the_hooks_gets_a_reseeded_value(default_device: Backend) -> None:
    install_default_hooks()
    runs: list[int] = []
    on_restore(runs.append, phase=Phase.SECRETS)

    @generation_bound
    def prefix() -> int:
        return random.getrandbits(64)

    async with restore_watcher(default_device.path) as watcher:
        prefix()
        snapshot_state = random.getstate()  # what every clone of this snapshot holds
        new = default_device.bump()
        # The request runs now, before the watcher's task has had a turn. Only the watcher runs
        # hooks, and the loop's own thread cannot wait for it: a typed refusal, never the old value.
        with pytest.raises(RestorePendingError, match="only the restore watcher"):
            prefix()
        assert runs == []
        assert await restored() == new  # what a request handler does first
        value = prefix()
        assert value != stale_draw(snapshot_state), "built from the RNG state of the snapshot"
        assert runs == [new], "the watcher ran the hooks"
        await until(lambda: watcher.acknowledged == new)
        assert prefix() == value, "one value per generation"
        assert runs == [new], "no hook ran twice"


def held_key_rotation() -> tuple[RestoreHooks, dict[str, str], anyio.Event]:
    """A registry with one async SECRETS hook, ``rotate``, that renews ``key["value"]`` once
    ``release`` is set: a hook that is still running while requests arrive."""
    hooks = RestoreHooks()
    key = {"value": "snapshot"}
    release = anyio.Event()

    @hooks.register(phase=Phase.SECRETS)
    async def rotate(generation: int) -> None:
        await release.wait()
        key["value"] = f"key-{generation}"

    return hooks, key, release


@pytest.mark.anyio
async def test_an_async_hook_before_the_value_makes_a_sync_request_wait_or_refuse(default_device: Backend) -> None:
    hooks, key, release = held_key_rotation()
    token = GenerationBound(lambda: f"token-from-{key['value']}", hooks=hooks)
    async with restore_watcher(default_device.path, hooks=hooks) as watcher:
        assert token() == "token-from-snapshot"
        new = default_device.bump()
        # The loop's own thread cannot wait for the watcher: a typed refusal, never the old key.
        with pytest.raises(RestorePendingError, match="rotate") as caught:
            token()
        assert caught.value.generation == new and caught.value.waiting_for == "rotate"
        # Another thread waits until the watcher has run the hook.
        from_thread: list[str] = []
        reader = threading.Thread(target=lambda: from_thread.append(token()))
        reader.start()
        await anyio.sleep(0.1)
        assert from_thread == []
        release.set()
        assert await restored(hooks=hooks) == new
        assert token() == f"token-from-key-{new}"
        await anyio.to_thread.run_sync(reader.join, 30)
        assert from_thread == [f"token-from-key-{new}"]
        await until(lambda: watcher.acknowledged == new)


@pytest.mark.anyio
async def test_an_async_bound_value_waits_for_an_async_hook(default_device: Backend) -> None:
    hooks, key, release = held_key_rotation()
    async def connect() -> str:
        return f"session-with-{key['value']}"

    session = AsyncGenerationBound(connect, hooks=hooks)
    async with restore_watcher(default_device.path, hooks=hooks):
        assert await session.get() == "session-with-snapshot"
        new = default_device.bump()
        got: list[str] = []

        async def request() -> None:
            got.append(await session.get())

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(request)
            await anyio.sleep(0.1)
            assert got == [], "held until the hook has run"
            release.set()
        assert got == [f"session-with-key-{new}"]


@pytest.mark.anyio
async def test_restored_runs_the_hooks_for_a_request_that_comes_first(default_device: Backend) -> None:
    ran: list[int] = []

    @on_restore(phase=Phase.CONNECTIONS)
    async def reconnect(generation: int) -> None:
        ran.append(generation)

    async with restore_watcher(default_device.path) as watcher:
        new = default_device.bump()
        assert await restored() == new
        assert ran == [new]
        await until(lambda: watcher.acknowledged == new)
        assert ran == [new], "the watcher found the run done: each hook once per generation"


# -- case 2: retries keep the phase order ---------------------------------------------------


@pytest.mark.anyio
async def test_a_retry_reruns_the_failed_phase_and_everything_after_it(default_device: Backend) -> None:
    hooks = RestoreHooks()
    state = {"identity": "snapshot", "secret": "", "attempts": 0}

    @hooks.register(phase=Phase.IDENTITIES)
    def renew_identity(generation: int) -> None:
        state["attempts"] += 1  # type: ignore[operator]
        if state["attempts"] == 1:
            raise OSError("the identity service is not up yet")
        state["identity"] = f"id-{generation}"

    @hooks.register(phase=Phase.SECRETS)
    def derive_secret(generation: int) -> None:
        state["secret"] = f"secret-of-{state['identity']}"

    async with restore_watcher(default_device.path, hooks=hooks, retry=FAST_RETRY) as watcher:
        new = default_device.bump()
        await until(lambda: watcher.acknowledged == new)
    assert state["identity"] == f"id-{new}"
    assert state["secret"] == f"secret-of-id-{new}", "the later phase was built on the failed one"


@pytest.mark.anyio
async def test_subscribers_get_the_generation_while_hooks_are_retried(default_device: Backend) -> None:
    hooks = RestoreHooks()
    hooks.register(lambda generation: (_ for _ in ()).throw(OSError("down")), name="always_failing")
    async with restore_watcher(default_device.path, hooks=hooks, retry=FAST_RETRY) as watcher:
        subscription = watcher.subscribe()
        new = default_device.bump()
        with anyio.fail_after(30):
            assert await subscription.__anext__() == new
        assert watcher.last_error is not None and watcher.acknowledged is None
        subscription.close()


# -- case 5: Reopenable never empties its slot ------------------------------------------------


@pytest.mark.anyio
async def test_reopen_under_load_never_shows_an_empty_or_closed_resource() -> None:
    closed: set[int] = set()
    serial = iter(range(1, 1000))

    async def open_pool() -> int:
        await anyio.sleep(0.02)
        return next(serial)

    async def close_pool(pool: int) -> None:
        await anyio.sleep(0.01)
        closed.add(pool)

    pool = Reopenable(open_pool, close_pool)
    await pool.start()
    failures: list[BaseException] = []
    served = 0

    async def request() -> None:
        nonlocal served
        try:
            async with pool.use() as resource:
                await anyio.sleep(0.03)
                assert resource not in closed, "closed while a request held it"
            assert pool.current not in closed
            served += 1
        except (RuntimeError, AssertionError) as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tasks:
        for index in range(200):
            tasks.start_soon(request)
            if index % 50 == 0:
                tasks.start_soon(pool.reopen)
            await anyio.sleep(0.001)
    assert failures == [] and served == 200
    assert pool.reopens == 4 and closed == {1, 2, 3, 4}
    await pool.aclose()


# -- case 6: the fixture isolates tests -------------------------------------------------------


def readme_test_example() -> str:
    """The test example of README.md, as it stands there."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    (example,) = [block for block in blocks if "def test_" in block]
    return str(example)


def test_the_readme_test_passes_twice_in_one_session(pytester: pytest.Pytester) -> None:
    example = readme_test_example()
    again = example.replace("def test_", "def test_again_")
    pytester.makepyfile(test_first=example, test_second=again, test_hooks="""
        from sysgenid_async.restore import on_restore, restore_hooks

        def test_a_hook_of_one_test(sysgenid_sim):
            on_restore(print)

        def test_is_not_in_the_next(sysgenid_sim):
            assert len(restore_hooks) == 0
        """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


def test_isolated_state_puts_the_registries_back() -> None:
    def mine(generation: int) -> None:
        pass

    restore_hooks.register(mine)
    on_before_snapshot(mine)
    runtime_dir = os.environ.get("SYSGENID_ASYNC_RUNTIME_DIR")
    try:
        with isolated_state():
            assert len(restore_hooks) == 0 and restore_hooks.lifecycle_hooks(HookKind.BEFORE_SNAPSHOT) == []
            on_restore(print)
            on_resume(print)
            inside = os.environ["SYSGENID_ASYNC_RUNTIME_DIR"]
            assert inside != runtime_dir and os.path.isdir(inside)  # a test never announces machine-wide
        assert [h.function for h in restore_hooks.hooks] == [mine]
        assert [h.function for h in restore_hooks.lifecycle_hooks(HookKind.BEFORE_SNAPSHOT)] == [mine]
        assert restore_hooks.lifecycle_hooks(HookKind.RESUME) == []
        assert os.environ.get("SYSGENID_ASYNC_RUNTIME_DIR") == runtime_dir and not os.path.exists(inside)
    finally:
        restore_hooks.unregister(mine)


# -- case 7: the simulator refuses other processes --------------------------------------------


def test_a_spawned_process_is_told_the_simulator_is_in_process_only() -> None:
    sim = SimulatedDevice()
    with sim.installed("/dev/sysgenid-only-in-this-process"):
        done = subprocess.run(
            [sys.executable, "-c", "from sysgenid_async.device import Device; Device.open()"],
            capture_output=True, text=True, check=False, timeout=60,
        )
    assert done.returncode != 0
    assert "SimulatorProcessError" in done.stderr and "simulated sysgenid device" in done.stderr


def test_a_forked_child_is_refused_the_simulator(sysgenid_sim: SimulatedDevice) -> None:
    import warnings

    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: the child only reports
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        try:
            Device.open()
            answer = "opened"
        except SimulatorProcessError as exc:
            answer = f"refused: {exc}"
        except BaseException as exc:
            answer = repr(exc)
        os.write(write_end, answer.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    assert answer.startswith("refused:") and "fork" in answer


@pytest.mark.anyio
async def test_a_forked_child_starts_with_no_watcher_and_no_parent_file(default_device: Backend) -> None:
    """The parent's restore watcher does not run in a child: the child may start its own, and
    the parent's handles there are released and refuse use (ForkedHandleError)."""
    import warnings

    async with restore_watcher(default_device.path) as watcher:
        assert restore_hooks.gate.watcher is watcher
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            from sysgenid_async.errors import ForkedHandleError

            checks = [restore_hooks.gate.watcher is None, watcher.handle.closed]
            try:
                watcher.handle.ack(0)
            except ForkedHandleError:
                checks.append(True)
            except BaseException:
                checks.append(False)
            os.write(write_end, repr(checks).encode())
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.read().decode()
        await anyio.to_thread.run_sync(os.waitpid, pid, 0)
        assert answer == "[True, True, True]"
        assert not watcher.handle.closed, "the parent's file is untouched"


# -- case 8: one restore watcher per registry -------------------------------------------------


@pytest.mark.anyio
async def test_a_second_watcher_on_the_same_registry_is_refused(default_device: Backend) -> None:
    runs: list[int] = []
    hooks = RestoreHooks()
    hooks.register(runs.append)
    async with restore_watcher(default_device.path, hooks=hooks) as watcher:
        with pytest.raises(RestoreWatcherRunningError, match="already serves"):
            async with restore_watcher(default_device.path, hooks=hooks):
                pytest.fail("a second watcher started")
        assert default_device.open_files() == 1, "the refused watcher left no file open"
        new = default_device.bump()
        await until(lambda: watcher.acknowledged == new)
        assert runs == [new]
    # Once the first has stopped, a new one may start.
    async with restore_watcher(default_device.path, hooks=hooks):
        pass


# -- case 10: hook and value signatures, timed-out sync hooks ---------------------------------


def test_a_hook_with_the_wrong_signature_is_refused_at_registration() -> None:
    hooks = RestoreHooks()

    def no_generation() -> None:
        pass

    def two(generation: int, other: int) -> None:
        pass

    with pytest.raises(TypeError, match=r"hook\(generation\)"):
        hooks.register(no_generation)  # type: ignore[type-var]
    with pytest.raises(TypeError, match=r"hook\(generation\)"):
        hooks.register(two)  # type: ignore[type-var]
    hooks.register(lambda generation, extra=1: None)  # a default for the rest is fine
    assert len(hooks) == 1


def test_an_async_factory_is_refused_by_the_sync_bound_value() -> None:
    async def connect() -> object:
        return object()

    with pytest.raises(TypeError, match="AsyncGenerationBound"):
        generation_bound(connect)
    with pytest.raises(TypeError, match="no argument"):
        generation_bound(lambda needed: needed)  # type: ignore[arg-type, misc]


@pytest.mark.anyio
async def test_a_timed_out_sync_hook_is_not_run_twice_at_once(default_device: Backend) -> None:
    hooks = RestoreHooks()
    running = 0
    most = 0
    release = threading.Event()
    lock = threading.Lock()

    @hooks.register(timeout=0.05)
    def slow(generation: int) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(30)
        with lock:
            running -= 1

    async with restore_watcher(default_device.path, hooks=hooks, retry=FAST_RETRY) as watcher:
        new = default_device.bump()
        await until(lambda: watcher.last_error is not None)
        await anyio.sleep(0.3)  # several retries come and go while the first call still runs
        assert most == 1, "a retry started a second copy of a hook still running"
        assert "still running" in repr(watcher.last_error.exceptions[0].__cause__)  # type: ignore[union-attr]
        release.set()
        await until(lambda: watcher.acknowledged == new)


# -- without a restore watcher: the first touch runs the hooks --------------------------------


def test_without_a_watcher_the_first_touch_runs_the_hooks_and_retries_them(default_device: Backend) -> None:
    hooks = RestoreHooks()
    attempts: list[int] = []

    @hooks.register(phase=Phase.RESEED)
    def flaky(generation: int) -> None:
        attempts.append(generation)
        if len(attempts) <= 2:
            raise OSError("not yet")

    value = GenerationBound(object, hooks=hooks)
    before = value()
    new = default_device.bump()
    with pytest.raises(RestorePendingError, match="flaky") as caught:
        value()  # runs the hook, and retries it once: both fail
    assert "not yet" in str(caught.value.__cause__.__cause__)  # type: ignore[union-attr]
    assert attempts == [new, new]
    assert value() is not before, "the next touch retried the failed hook, which succeeded"
    assert attempts == [new, new, new]
    assert hooks.gate.restored_generation == new


def test_without_a_watcher_an_async_hook_cannot_run_for_a_sync_value(default_device: Backend) -> None:
    hooks = RestoreHooks()

    @hooks.register
    async def reconnect(generation: int) -> None:
        pass

    value = GenerationBound(object, hooks=hooks)
    value()
    default_device.bump()
    with pytest.raises(RestorePendingError, match="needs a running restore watcher"):
        value()
    value_before_it = GenerationBound(object, hooks=hooks, phase=Phase.RESEED)
    value_before_it()  # hooks after its phase do not hold it back
