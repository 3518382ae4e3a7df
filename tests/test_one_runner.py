"""One pass at a time: a model test of the restore layer's runner.

Hypothesis draws a registry (sync hooks, async ones, sync ones with a timeout, which run in a
worker thread; hooks that fail their first attempts; a hook that restores the machine from
inside itself, as a snapshot taken mid-pass does) and a script of restores, requests (tasks
that ``await restored()``, threads that touch a bound value), cancels of requests, prepares
and resumes. Each example runs the script against a real restore watcher, on the simulator
here and on the kernel module in the guest, on asyncio, uvloop and trio, and checks:

- at most one hook of the registry runs at any moment (so at most one pass, and no hook
  beside itself), whoever asked for it;
- once everything has settled, the state every restore hook built is the newest
  generation's: no stale pass finished last;
- every value handed out while the generation stood still is built from that generation's
  state, never from a mix or an older pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends import Backend
from sysgenid_async.restore import (
    AsyncGenerationBound,
    GenerationBound,
    Phase,
    RestoreHooks,
    RestorePendingError,
    RetryPolicy,
    restore_watcher,
    restored,
)

FAST_RETRY = RetryPolicy(initial_delay=0.001, max_delay=0.005)
SETTLE_SECONDS = 5.0  # on the host; the guest's Python is some 20 times slower
KINDS = ("sync", "async", "thread")


@dataclass(frozen=True)
class HookSpec:
    phase: Phase
    kind: str  # sync (inline), async, or thread (sync with a timeout: a worker thread)
    failures: int  # the first attempts for each generation fail
    restores_mid_pass: bool  # its first call restores the machine while the pass runs


@dataclass
class Observed:
    """What the example saw, checked once it has settled."""

    start: int = -1  # the generation the example began at: no hook has run for it
    running: int = 0
    most_at_once: int = 0
    state: dict[str, int] = field(default_factory=dict)  # hook name -> the generation it last built for
    values: list[tuple[int, int, tuple[int, ...]]] = field(default_factory=list)  # (before, after, value)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def enter(self) -> None:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)

    def leave(self) -> None:
        with self.lock:
            self.running -= 1


hook_specs = st.builds(
    HookSpec,
    phase=st.sampled_from([Phase.RESEED, Phase.SECRETS, Phase.CONNECTIONS]),
    kind=st.sampled_from(KINDS),
    failures=st.sampled_from([0, 0, 1, 2]),
    restores_mid_pass=st.booleans(),
)
operations = st.lists(
    st.one_of(
        st.just(("restore", 0)),
        st.just(("request", 0)),
        st.just(("thread", 0)),
        st.just(("cancel", 0)),
        st.just(("prepare", 0)),
        st.just(("resume", 0)),
        st.tuples(st.just("pause"), st.integers(0, 3)),
    ),
    min_size=1,
    max_size=14,
)


def build_hooks(specs: list[HookSpec], backend: Backend, seen: Observed) -> RestoreHooks:
    hooks = RestoreHooks()
    attempts: dict[tuple[str, int], int] = {}
    restored_once: set[str] = set()

    def body(name: str, spec: HookSpec, generation: int) -> None:
        """The work: fail on the first attempts, else build this generation's state."""
        key = (name, generation)
        attempts[key] = attempts.get(key, 0) + 1
        if attempts[key] <= spec.failures:
            raise OSError(f"{name}: attempt {attempts[key]} fails")
        seen.state[name] = generation

    for index, spec in enumerate(specs):
        name = f"h{index}-{spec.kind}"

        def make(name: str = name, spec: HookSpec = spec) -> None:
            if spec.kind == "async":

                async def hook(generation: int) -> None:
                    seen.enter()
                    try:
                        await anyio.sleep(0.001)
                        if spec.restores_mid_pass and name not in restored_once:
                            restored_once.add(name)
                            backend.bump()  # a snapshot taken mid-pass, and this is its clone
                        await anyio.lowlevel.checkpoint()
                        body(name, spec, generation)
                    finally:
                        seen.leave()

                hooks.register(hook, phase=spec.phase, name=name)
            else:

                def sync_hook(generation: int) -> None:
                    seen.enter()
                    try:
                        if spec.restores_mid_pass and name not in restored_once:
                            restored_once.add(name)
                            backend.bump()
                        time.sleep(0.0005)
                        body(name, spec, generation)
                    finally:
                        seen.leave()

                hooks.register(sync_hook, phase=spec.phase, name=name,
                               timeout=30 if spec.kind == "thread" else None)

        make()

    async def before_snapshot(generation: int) -> None:
        seen.enter()
        try:
            await anyio.sleep(0.001)
        finally:
            seen.leave()

    def on_resume(generation: int) -> None:
        seen.enter()
        seen.leave()

    hooks.before_snapshot(before_snapshot)
    hooks.on_resume(on_resume)
    return hooks


async def run_script(
    backend: Backend, specs: list[HookSpec], script: list[tuple[str, int]], settle: float = SETTLE_SECONDS
) -> Observed:
    seen = Observed(start=backend.generation)
    hooks = build_hooks(specs, backend, seen)
    names = [hook.name for hook in hooks.hooks]

    def snapshot() -> tuple[int, ...]:
        return tuple(seen.state.get(name, -1) for name in names)

    async def async_snapshot() -> tuple[int, ...]:
        await anyio.lowlevel.checkpoint()
        return snapshot()

    value = GenerationBound(snapshot, hooks=hooks)
    async_value = AsyncGenerationBound(async_snapshot, hooks=hooks)
    requests: list[anyio.CancelScope] = []

    async def request(number: int) -> None:
        with anyio.CancelScope() as scope:
            requests.append(scope)
            before = backend.generation
            await restored(hooks=hooks, timeout=settle)
            got = await async_value.get() if number % 2 else value()
            seen.values.append((before, backend.generation, got))

    def thread_request() -> None:
        before = backend.generation
        try:
            got = value()
        except RestorePendingError:
            return  # a typed refusal is allowed; an old value is not
        seen.values.append((before, backend.generation, got))

    async with restore_watcher(backend.path, hooks=hooks, retry=FAST_RETRY, announce=False) as watcher:
        lifecycle = watcher.lifecycle
        assert lifecycle is not None
        async with anyio.create_task_group() as tasks:
            for number, (op, argument) in enumerate(script):
                if op == "restore":
                    backend.bump()
                elif op == "request":
                    tasks.start_soon(request, number)
                elif op == "thread":
                    tasks.start_soon(anyio.to_thread.run_sync, thread_request)
                elif op == "cancel" and requests:
                    requests[number % len(requests)].cancel()
                elif op in ("prepare", "resume"):
                    tasks.start_soon(lifecycle.dispatch, op, {"timeout": settle})
                else:
                    for _ in range(argument):
                        await anyio.lowlevel.checkpoint()
        with anyio.fail_after(settle):
            # Settled: the newest generation acknowledged (if there was any restore), nothing running.
            while (backend.generation != seen.start and watcher.acknowledged != backend.generation) or seen.running:  # noqa: ASYNC110
                await anyio.sleep(0.001)
        seen.values.append((backend.generation, backend.generation, value()))
    return seen


def check(seen: Observed, backend: Backend, specs: list[HookSpec]) -> None:
    assert seen.most_at_once <= 1, f"{seen.most_at_once} hooks ran at once: two passes overlapped"
    newest = backend.generation
    if newest != seen.start:
        assert seen.state == {name: newest for name in seen.state} and len(seen.state) == len(specs), (
            f"the settled state is not generation {newest}'s alone: {seen.state}"
        )
    for before, after, value in seen.values:
        if before == after != seen.start:
            assert set(value) == {before}, f"a value handed out at generation {before} was built from {value}"


def test_one_pass_at_a_time_and_the_newest_state_wins(
    backend: Backend, anyio_backend: tuple[str, dict[str, object]]
) -> None:
    name, options = anyio_backend
    examples = 20 if backend.kernel else 50
    settle = SETTLE_SECONDS * (20 if backend.kernel else 1)

    @settings(max_examples=examples, deadline=None, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(specs=st.lists(hook_specs, min_size=1, max_size=5), script=operations)
    def example(specs: list[HookSpec], script: list[tuple[str, int]]) -> None:
        seen = anyio.run(run_script, backend, specs, script, settle, backend=name, backend_options=options)
        check(seen, backend, specs)

    example()


def test_the_checks_catch_two_passes_at_once_and_a_stale_pass_last() -> None:
    """The checks themselves: each rejects what it is there to reject."""

    class Stub:
        generation = 5

    specs = [HookSpec(Phase.RESEED, "async", 0, False)]
    overlapped = Observed(start=3, most_at_once=2, state={"h0-async": 5})
    with pytest.raises(AssertionError, match="hooks ran at once"):
        check(overlapped, Stub(), specs)  # type: ignore[arg-type]
    stale_last = Observed(start=3, most_at_once=1, state={"h0-async": 4})
    with pytest.raises(AssertionError, match="not generation 5's alone"):
        check(stale_last, Stub(), specs)  # type: ignore[arg-type]
    mixed = Observed(start=3, most_at_once=1, state={"h0-async": 5}, values=[(5, 5, (5, 4))])
    with pytest.raises(AssertionError, match="built from"):
        check(mixed, Stub(), specs)  # type: ignore[arg-type]
    # What may happen: a value of a generation that moved on meanwhile, nothing run at the start.
    check(Observed(start=3, most_at_once=1, state={"h0-async": 5}, values=[(4, 5, (4,))]), Stub(), specs)  # type: ignore[arg-type]
    check(Observed(start=5, values=[(5, 5, (-1,))]), Stub(), specs)  # type: ignore[arg-type]


# -- the two stories of the issue, told exactly ------------------------------------------------


async def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - the state lives in hooks and threads
            await anyio.sleep(0.005)


@pytest.mark.anyio
async def test_a_restore_during_an_async_pass_cancels_it_and_a_request_waits_for_the_newer_one(
    default_device: Backend,
) -> None:
    backend = default_device
    hooks = RestoreHooks()
    log: list[str] = []
    seed: dict[str, int] = {}
    stale_pass_may_go_on = anyio.Event()

    @hooks.register(phase=Phase.RESEED)
    async def reseed(generation: int) -> None:
        log.append(f"start {generation}")
        if len(log) == 1:
            await stale_pass_may_go_on.wait()  # the VM is snapshotted here; this is a clone
        await anyio.lowlevel.checkpoint()
        seed["from"] = generation
        log.append(f"done {generation}")

    async with restore_watcher(backend.path, hooks=hooks, announce=False) as watcher:
        first = backend.bump()
        await until(lambda: log == [f"start {first}"])
        second = backend.bump()
        served: list[int] = []

        async def request() -> None:
            await restored(hooks=hooks)
            served.append(seed["from"])

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(request)
            await anyio.sleep(0.05)
            stale_pass_may_go_on.set()
        await until(lambda: watcher.acknowledged == second)
    assert log == [f"start {first}", f"start {second}", f"done {second}"], "the stale pass never finished"
    assert seed == {"from": second} and served == [second]


@pytest.mark.anyio
async def test_a_thread_never_runs_a_sync_hook_beside_the_watcher(default_device: Backend) -> None:
    backend = default_device
    hooks = RestoreHooks()
    log: list[str] = []
    lock = threading.Lock()
    running = [0, 0]  # now, most at once
    inside_first = threading.Event()
    let_first_finish = threading.Event()

    @hooks.register(phase=Phase.RESEED)
    def reseed(generation: int) -> None:
        with lock:
            running[0] += 1
            running[1] = max(running)
            log.append(f"start {generation}")
        if len(log) == 1:
            inside_first.set()
            let_first_finish.wait(30)  # inline on the watcher's loop: the loop waits too
        with lock:
            log.append(f"done {generation}")
            running[0] -= 1

    value = GenerationBound(lambda: log[-1] if log else "nothing yet", hooks=hooks)
    served: list[str] = []

    def clone_and_request() -> None:
        inside_first.wait(30)
        backend.bump()  # a newer generation while the watcher runs the first pass
        reader = threading.Thread(target=lambda: served.append(value()))
        reader.start()
        time.sleep(0.1)  # the reader has arrived: on the old code it ran the hook itself, now
        let_first_finish.set()
        reader.join(30)

    async with restore_watcher(backend.path, hooks=hooks, announce=False) as watcher:
        value()
        helper = threading.Thread(target=clone_and_request)
        helper.start()
        first = backend.bump()
        await until(lambda: watcher.acknowledged == first + 1)
        await anyio.to_thread.run_sync(helper.join, 30)
    second = first + 1
    assert running[1] == 1, f"two copies of the hook ran at once: {log}"
    assert log == [f"start {first}", f"done {first}", f"start {second}", f"done {second}"]
    assert served == [f"done {second}"]


@pytest.mark.kernel_only  # the simulator lives in one process's memory
@pytest.mark.anyio
async def test_a_child_forked_during_a_pass_runs_its_own_and_the_parent_goes_on(default_device: Backend) -> None:
    """The child of a fork taken while the watcher's pass holds the turn inherits no turn and no
    watcher: a value it touches runs the sync hooks there, once, for the child alone."""
    import os
    import warnings

    backend = default_device
    hooks = RestoreHooks()
    ran: list[tuple[int, int]] = []
    in_pass, fork_done = anyio.Event(), anyio.Event()

    @hooks.register(phase=Phase.RESEED)
    def reseed(generation: int) -> None:
        ran.append((os.getpid(), generation))

    @hooks.register(phase=Phase.CONNECTIONS)
    async def reconnect(generation: int) -> None:
        in_pass.set()
        await fork_done.wait()

    value = GenerationBound(lambda: ("built", os.getpid()), hooks=hooks, phase=Phase.RESEED)
    async with restore_watcher(backend.path, hooks=hooks, announce=False) as watcher:
        value()
        new = backend.bump()
        await in_pass.wait()  # the parent's pass holds the turn, inside reconnect
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: the child only reports
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read_end)
            try:
                answer = repr((hooks.gate.watcher is None, value()[1] == os.getpid(), ran[-1]))
            except BaseException as exc:
                answer = repr(exc)
            os.write(write_end, answer.encode())
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            answer = (await anyio.to_thread.run_sync(pipe.read)).decode()
        await anyio.to_thread.run_sync(os.waitpid, pid, 0)
        fork_done.set()
        await until(lambda: watcher.acknowledged == new)
    assert answer == repr((True, True, (pid, new))), answer
    assert ran == [(os.getpid(), new)], "the parent's pass ran once, in the parent"


@pytest.mark.anyio
async def test_a_slow_subscriber_does_not_hold_the_next_generations_hooks(default_device: Backend) -> None:
    backend = default_device
    hooks = RestoreHooks()
    ran: list[int] = []
    hooks.register(ran.append)
    async with restore_watcher(backend.path, hooks=hooks, announce=False) as watcher:
        subscription = watcher.subscribe()
        first = backend.bump()
        with anyio.fail_after(30):
            assert await subscription.__anext__() == first  # then its loop body takes its time
        second = backend.bump()
        with anyio.fail_after(10):
            assert await restored(hooks=hooks) == second, "the hooks waited for a subscriber"
        assert ran == [first, second]
        subscription.close()
