"""The library on the shipped drivers' behaviour (docs/drivers.md).

Every test runs on every backend; on the host and in the guest that includes the flavours
that reproduce Amazon Linux's v8 driver and the v4 patch, so the library is checked
against their quirks on every CI run: a counter computed in a signed int, which comes back
to values it had and jumps into the upper half and back, the stuck outdated count, the
root-only node.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from backends import KERNEL_PATH, NOBODY, Backend, KernelBackend, start_low
from sysgenid_async import Abi, WaitResult, watch
from sysgenid_async.restore import GenerationBound, Orchestrator, restore_watcher
from sysgenid_async.restore.hooks import RestoreHooks
from sysgenid_async.restore.orchestrator import OrchestrationReport
from sysgenid_async.testing import Quirk

INT_MAX = 2**31 - 1
U32_MAX = 2**32 - 1
RULE = Path(__file__).resolve().parent.parent / "kernel" / "60-sysgenid.rules"


#: The storm's minimums, and where they take the counter from 0 on each kind of counter: a
#: signed one jumps from 2147483647 into the upper half and a plain change brings it back to 0.
MINIMUMS = [INT_MAX - 2, 0, 0, 2**31, 0, INT_MAX, U32_MAX - 1, 0, 0, U32_MAX, 0]
ON_A_U32_COUNTER = [INT_MAX - 2, INT_MAX - 1, INT_MAX, 2**31, 2**31 + 1, 2**31 + 2, U32_MAX - 1, U32_MAX, 0,
                    U32_MAX, 0]
ON_A_SIGNED_COUNTER = [INT_MAX - 2, INT_MAX - 1, INT_MAX, 2**31, 0, INT_MAX, U32_MAX - 1, 0, 1, 2, 3]


async def _until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds (a minute at most): what it waits for happens in other tasks."""
    with anyio.fail_after(60):
        while True:
            if condition():
                return
            await anyio.sleep(0.005)


@pytest.mark.anyio
async def test_a_trigger_storm_across_the_counters_limits(default_device: Backend) -> None:
    """Through 2**31 - 1 and the u32 wrap; on a signed counter, up into the upper half and back
    to 0, twice: every change is seen, acknowledged, orchestrated, and rebuilds the bound values."""
    backend = default_device
    start_low(backend)  # from 0, whatever earlier tests left (the kernel module keeps its counter)
    seen: list[int] = []
    reports: list[OrchestrationReport] = []
    hooks = RestoreHooks()
    restored: list[int] = []
    hooks.register(restored.append)
    builds: list[int] = []
    peer = backend.peer()  # a watcher in another process, acknowledging each change
    try:
        async with (
            Orchestrator(backend.path, timeout=60) as orchestrator,
            restore_watcher(backend.path, hooks=hooks),
            watch(backend.path) as changes,
            anyio.create_task_group() as tasks,
        ):
            async def follow() -> None:
                async for generation in changes:  # acknowledged when the next iteration starts
                    seen.append(generation)

            async def orchestrate() -> None:
                while True:
                    reports.append(await orchestrator.handle_next())

            tasks.start_soon(follow)
            tasks.start_soon(orchestrate)
            def build() -> object:
                builds.append(backend.generation)
                return object()

            token = GenerationBound(build, hooks=hooks)
            generations = []
            for minimum in MINIMUMS:
                generation = await anyio.to_thread.run_sync(backend.bump, minimum)
                generations.append(generation)
                assert await anyio.to_thread.run_sync(peer.ack) == generation
                def handled(g: int = generation) -> bool:
                    return seen[-1:] == [g] and [r.generation for r in reports[-1:]] == [g] and restored[-1:] == [g]

                await _until(handled)
                assert reports[-1].caught_up, reports[-1]
                before = token()
                assert builds[-1] == generation
                assert token() is before
            tasks.cancel_scope.cancel()
    finally:
        peer.close()
    signed = Quirk.SIGNED_COUNTER in backend.quirks
    assert generations == (ON_A_SIGNED_COUNTER if signed else ON_A_U32_COUNTER)
    assert seen == generations == restored[-len(generations):]


@pytest.mark.anyio
@pytest.mark.with_quirk(Quirk.SIGNED_COUNTER)
async def test_a_counter_that_comes_back_is_still_a_change(default_device: Backend) -> None:
    """5, then 2147483647, then 5 again: a value built at the first 5 is not handed out at the second."""
    backend = default_device
    hooks = RestoreHooks()
    restored: list[int] = []
    hooks.register(restored.append)
    backend.bump(INT_MAX)
    backend.bump(0)
    backend.bump(5)
    seen: list[int] = []
    async with (
        restore_watcher(backend.path, hooks=hooks),
        watch(backend.path) as changes,
        anyio.create_task_group() as tasks,
    ):
        async def follow() -> None:
            async for change in changes:
                seen.append(change)

        tasks.start_soon(follow)
        token = GenerationBound(object, hooks=hooks)
        first = token()
        for minimum in (INT_MAX, 5):
            generation = await anyio.to_thread.run_sync(backend.bump, minimum)
            def handled(g: int = generation) -> bool:
                return restored[-1:] == [g] and seen[-1:] == [g]

            await _until(handled)
        tasks.cancel_scope.cancel()
    assert seen == [INT_MAX, 5] and restored == [INT_MAX, 5]
    assert token() is not first, "the value built at the first 5 was built before two restores"


@pytest.mark.anyio
@pytest.mark.with_quirk(Quirk.RECOUNT_ALL_TRACKED)
async def test_the_stuck_count_is_reported_with_its_likely_cause(backend: Backend) -> None:
    backend.bump(INT_MAX)
    backend.bump(0)
    peer = backend.peer()
    try:
        async with Orchestrator(backend.path, timeout=0.3) as orchestrator:
            await anyio.to_thread.run_sync(backend.bump, INT_MAX)
            assert await anyio.to_thread.run_sync(peer.ack) == INT_MAX
            # A trigger that changes nothing: the peer, up to date, counts as outdated again.
            await anyio.to_thread.run_sync(backend.bump, INT_MAX)
            with anyio.fail_after(60):
                reports = [await orchestrator.handle_next()]
        report = reports[0]
        assert report.generation == INT_MAX and report.result is WaitResult.TIMED_OUT
        assert report.likely_cause is not None and "the shipped drivers" in report.likely_cause
        assert "trigger once more" in report.likely_cause
        if backend.abi is Abi.V4:  # the count names the peer, which is up to date
            assert report.late_watchers is not None and report.late_watchers >= 1
        # the command line says the same
        if backend.kernel:  # the simulator lives in this process: another cannot open it
            done = await anyio.run_process(
                [sys.executable, "-m", "sysgenid_async", "--device", backend.path, "wait-watchers", "--timeout", "0.2"],
                check=False,
            )
            assert done.returncode == 3 and b"the shipped drivers" in done.stderr, done.stderr
        backend.bump()  # the next real change clears it
        assert peer.ack() == backend.generation
    finally:
        peer.close()


def test_no_cause_is_guessed_for_an_ordinary_timeout() -> None:
    from sysgenid_async.restore.orchestrator import likely_cause_of_timeout

    assert likely_cause_of_timeout(INT_MAX - 1) is None
    assert likely_cause_of_timeout(INT_MAX + 1) is None
    assert likely_cause_of_timeout(INT_MAX) is not None


# -- the node's permissions, and the udev rule ------------------------------------------------


def _rule() -> dict[str, str]:
    line = next(line for line in RULE.read_text().splitlines() if line and not line.startswith("#"))
    pairs = dict(re.findall(r'(\w+)={1,2}"([^"]*)"', line))
    assert set(pairs) == {"KERNEL", "SUBSYSTEM", "GROUP", "MODE"}, line
    return pairs


def test_the_udev_rule_matches_the_device() -> None:
    rule = _rule()
    assert rule["KERNEL"] == Path(KERNEL_PATH).name and rule["SUBSYSTEM"] == "misc"
    assert int(rule["MODE"], 8) & 0o007 == 0, "nobody outside the group: a reader could track and never ack"


AS_SERVICE = textwrap.dedent("""
    import sys
    from sysgenid_async.device import Device
    from sysgenid_async.errors import ReadOnlyHandleError
    path, action = sys.argv[1], sys.argv[2]
    try:
        if action == "watch":
            with Device.open(path) as device:
                device.ack(device.generation)  # a write: the access a watcher needs
                print("acknowledged", device.generation)
        else:
            with Device.open(path, watcher=False) as probe:
                print("probed", probe.generation)
                try:
                    probe.ack(probe.generation)
                except ReadOnlyHandleError:
                    print("cannot ack")
    except PermissionError as exc:
        print("refused:", exc)
""")


def _as_user(path: str, action: str, *, groups: str | None) -> str:
    command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
               f"--groups={groups}" if groups else "--clear-groups"]
    done = subprocess.run(
        [*command, sys.executable, "-c", AS_SERVICE, path, action], capture_output=True, text=True, check=False,
        timeout=60, env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def node_mode(backend: Backend) -> Iterator[None]:
    assert isinstance(backend, KernelBackend)
    info = os.stat(backend.path)
    yield
    os.chown(backend.path, info.st_uid, info.st_gid)
    os.chmod(backend.path, info.st_mode & 0o7777)


@pytest.mark.kernel_only
def test_a_service_in_the_rules_group_watches_and_acknowledges(backend: Backend, node_mode: None) -> None:
    # what udev does with the rule; the group by number (the guest's /etc is the host's, read-only)
    service_group = 4242
    os.chown(backend.path, 0, service_group)
    os.chmod(backend.path, int(_rule()["MODE"], 8))
    assert _as_user(backend.path, "watch", groups=str(service_group)) == f"acknowledged {backend.generation}"
    outsider = _as_user(backend.path, "watch", groups=None)
    assert outsider.startswith("refused:") and "udev rule" in outsider and "mode 0660" in outsider


@pytest.mark.kernel_only
def test_a_probe_only_service_needs_only_read_access(backend: Backend, node_mode: None) -> None:
    os.chmod(backend.path, 0o644)
    assert _as_user(backend.path, "probe", groups=None) == f"probed {backend.generation}\ncannot ack"


@pytest.mark.kernel_only
@pytest.mark.with_quirk(Quirk.ROOT_ONLY_NODE)
def test_selftest_as_an_unprivileged_user_on_a_root_only_node(backend: Backend) -> None:
    done = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-m",
         "sysgenid_async", "--device", backend.path, "selftest"],
        capture_output=True, text=True, check=False, timeout=60,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
    )
    assert done.returncode == 5, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert "mode 0600" in done.stderr and "udev rule" in done.stderr
