"""The snapshot lifecycle: the watcher registry, prepare and resume over the control sockets,
named late watchers, readiness (wait-ready, the channel, systemd), and the faults of each."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from backends import NOBODY, Backend
from sysgenid_async import Abi, BlockingSysGenID, WaitResult
from sysgenid_async.cli import EXIT_BUSY, EXIT_LIFECYCLE_FAILED, EXIT_OK, EXIT_PERMISSION, EXIT_TIMED_OUT, cli
from sysgenid_async.restore import HookKind, Orchestrator, Phase, RestoreHooks, RetryPolicy, control, restore_watcher
from sysgenid_async.restore.registry import (
    Registry,
    RegistryError,
    RegistryPermissionError,
    WatcherEntry,
    WatcherState,
    process_start_time,
    service_name,
)

SLOW_RETRY = RetryPolicy(initial_delay=60)


@pytest.fixture
def runtime() -> Iterator[str]:
    """A registry directory of this test's own (short: unix socket paths are limited)."""
    directory = tempfile.mkdtemp(prefix="sgl-", dir="/tmp")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


async def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - the state lives in files and other threads
            await anyio.sleep(0.01)


async def run_cli(*args: str) -> int:
    """The command line, in a worker thread (it runs its own event loop), as a user would."""
    return await anyio.to_thread.run_sync(lambda: cli(*args))


def own_entry(runtime: str) -> WatcherEntry:
    entries = [e for e in Registry(runtime).entries() if e.pid == os.getpid()]
    assert len(entries) == 1, entries
    return entries[0]


def fake_entry(runtime: str, instance: int, **fields: object) -> WatcherEntry:
    """An entry in the name of this (live) process, as another watcher instance."""
    pid = os.getpid()
    values: dict[str, object] = {
        "pid": pid, "start_time": process_start_time(pid), "service": f"fake-{instance}", "acknowledged": 0,
        "state": WatcherState.READY, "instance": instance, **fields,
    }
    entry = WatcherEntry(**values)  # type: ignore[arg-type]
    Registry(runtime).announce(entry)
    return entry


# The registry.


@pytest.mark.anyio
async def test_a_watcher_announces_itself_follows_the_generation_and_withdraws(backend: Backend, runtime: str) -> None:
    async with restore_watcher(backend.path, hooks=RestoreHooks(), service="orders", runtime_dir=runtime):
        entry = own_entry(runtime)
        assert (entry.service, entry.state, entry.acknowledged) == ("orders", "ready", backend.generation)
        assert entry.start_time == process_start_time(os.getpid())
        sock = Path(runtime) / f"{os.getpid()}.sock"
        assert sock.is_socket() and sock.stat().st_mode & 0o777 == 0o600
        new = backend.bump()
        await until(lambda: own_entry(runtime).acknowledged == new)
        assert own_entry(runtime).state == WatcherState.READY
    assert os.listdir(runtime) == []  # entry and socket withdrawn: nothing left behind


@pytest.mark.anyio
async def test_announce_false_leaves_no_entry_and_no_socket(backend: Backend, runtime: str) -> None:
    async with restore_watcher(backend.path, hooks=RestoreHooks(), announce=False, runtime_dir=runtime):
        assert os.listdir(runtime) == []


def test_stale_entries_of_dead_or_reused_pids_are_ignored_and_pruned(runtime: str) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(dead.stdout)
    registry = Registry(runtime)
    registry.announce(WatcherEntry(dead_pid, 12345, "gone", 0, "ready"))
    own_start = process_start_time(os.getpid())
    assert own_start is not None
    fake_entry(runtime, 3, start_time=own_start + 1)  # a live pid, another start time: reused
    live = fake_entry(runtime, 4)
    (Path(runtime) / "junk.json").write_text("{not json")
    entries, stale = registry.scan()
    assert entries == [live]
    assert sorted(p.name for p in stale) == sorted([f"{dead_pid}.json", f"{os.getpid()}-3.json", "junk.json"])
    assert registry.prune() == 3 and registry.scan() == ([live], [])


def test_the_service_name_defaults_to_the_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/orders-api", "--port", "80"])
    assert service_name() == "orders-api"
    assert service_name("billing") == "billing"
    for bad in ("", "a\nb", "x" * 201):
        with pytest.raises(ValueError, match="service name"):
            service_name(bad)


@pytest.mark.parametrize("damage", ["group-readable", "symlink", "other-owner"])
def test_a_registry_directory_that_is_not_private_is_refused(
    runtime: str, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = runtime
    if damage == "group-readable":
        os.chmod(runtime, 0o755)
    elif damage == "symlink":
        target = runtime + "-link"
        os.symlink(runtime, target)
    else:
        if os.geteuid() != 0:
            pytest.skip("changing a directory's owner needs root (CI runs as root)")
        os.chown(runtime, NOBODY, NOBODY)
    try:
        with pytest.raises(RegistryPermissionError):
            Registry(target)
        assert cli("--runtime-dir", target, "prepare") == EXIT_PERMISSION
        assert cli("--runtime-dir", target, "resume") == EXIT_PERMISSION
        assert "sysgenid-async:" in capsys.readouterr().err
    finally:
        if damage == "symlink":
            os.unlink(target)


@pytest.mark.anyio
async def test_a_watcher_refuses_a_registry_that_is_not_private_and_leaves_nothing(
    backend: Backend, runtime: str
) -> None:
    os.chmod(runtime, 0o750)
    with pytest.raises(RegistryPermissionError, match="0700"):
        async with restore_watcher(backend.path, hooks=RestoreHooks(), runtime_dir=runtime):
            pass  # pragma: no cover - never entered
    assert backend.open_files() == 0 and os.listdir(runtime) == []


@pytest.mark.anyio
async def test_without_a_default_registry_place_the_watcher_runs_unannounced(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("SYSGENID_ASYNC_RUNTIME_DIR")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # a user with no runtime directory
    seen: list[int] = []
    hooks = RestoreHooks()
    hooks.register(seen.append)
    async with restore_watcher(backend.path, hooks=hooks) as watcher:
        assert watcher.lifecycle is not None and watcher.lifecycle.registry is None
        new = backend.bump()
        await until(lambda: watcher.acknowledged == new)
    assert seen == [new] and "not announced in the watcher registry" in caplog.text
    # Named explicitly, the same place is an error.
    with pytest.raises(RegistryError, match="parent directory does not exist"):
        async with restore_watcher(backend.path, hooks=RestoreHooks(), runtime_dir="/nonexistent/sga"):
            pass  # pragma: no cover - never entered
    assert backend.open_files() == 0


def test_a_missing_registry_directory() -> None:
    with pytest.raises(RegistryError, match="no registry directory"):
        Registry("/tmp/sysgenid-async-does-not-exist")
    with pytest.raises(RegistryError, match="empty"):
        Registry("")


# The hooks.


@pytest.mark.anyio
async def test_before_snapshot_hooks_run_connections_first_and_gather_errors() -> None:
    hooks = RestoreHooks()
    order: list[str] = []
    hooks.before_snapshot(lambda g: order.append("secrets"), phase=Phase.SECRETS)
    hooks.before_snapshot(lambda g: order.append("default"))
    hooks.before_snapshot(lambda g: order.append("connections"), phase=Phase.CONNECTIONS)
    hooks.before_snapshot(lambda g: order.append("caches"), phase=Phase.CACHES)

    @hooks.before_snapshot(phase=Phase.CACHES)
    def broken(generation: int) -> None:
        raise OSError("flush failed")

    @hooks.before_snapshot(phase=Phase.RESEED, timeout=0.05)
    async def stuck(generation: int) -> None:
        await anyio.sleep(5)

    hooks.on_resume(lambda g: order.append("resume-connections"), phase=Phase.CONNECTIONS)
    hooks.on_resume(lambda g: order.append("resume-secrets"), phase=Phase.SECRETS)
    errors = (await hooks.run_lifecycle(HookKind.BEFORE_SNAPSHOT, 7)).errors
    assert order == ["default", "connections", "caches", "secrets"]  # every hook ran despite the failure
    assert [(e.hook.name, e.kind) for e in errors] == [("broken", HookKind.BEFORE_SNAPSHOT),
                                                       ("stuck", HookKind.BEFORE_SNAPSHOT)]
    assert "before-snapshot hook broken raised OSError('flush failed') for generation 7" in str(errors[0])
    assert "timed out" in str(errors[1])
    order.clear()
    resumed = await hooks.run_lifecycle(HookKind.RESUME, 7)
    assert resumed.errors == [] and resumed.not_run == []
    assert order == ["resume-secrets", "resume-connections"]


@pytest.mark.anyio
async def test_a_lifecycle_hook_takes_a_priority_among_the_phases() -> None:
    """As a restore hook does: before-snapshot hooks run highest first, resume hooks lowest first."""
    hooks = RestoreHooks()
    order: list[str] = []
    for kind in (hooks.before_snapshot, hooks.on_resume):
        kind(lambda g: order.append("caches"), phase=Phase.CACHES)
        kind(lambda g: order.append("between"), priority=Phase.CACHES + 50)
        kind(lambda g: order.append("connections"), phase=Phase.CONNECTIONS)
    await hooks.run_lifecycle(HookKind.BEFORE_SNAPSHOT, 1)
    assert order == ["connections", "between", "caches"]
    order.clear()
    await hooks.run_lifecycle(HookKind.RESUME, 1)
    assert order == ["caches", "between", "connections"]


@pytest.mark.anyio
async def test_a_pass_that_runs_out_of_time_names_the_hooks_it_did_not_run() -> None:
    hooks = RestoreHooks()
    ran: list[str] = []

    @hooks.before_snapshot(phase=Phase.CONNECTIONS)
    async def slow(generation: int) -> None:
        await anyio.sleep(5)

    hooks.before_snapshot(lambda g: ran.append("late"), phase=Phase.CACHES, name="late")
    result = await hooks.run_lifecycle(HookKind.BEFORE_SNAPSHOT, 1, timeout=0.05)
    assert [e.hook.name for e in result.errors] == ["slow"], "the hook the budget interrupted timed out"
    assert "ran out of time" in str(result.errors[0].__cause__) and "timed out" in str(result.errors[0])
    assert [h.name for h in result.not_run] == ["late"] and ran == [], "the one it never started is not run"


def test_lifecycle_decorators_are_typed_and_checked() -> None:
    hooks = RestoreHooks()
    with pytest.raises(TypeError, match="hook\\(generation\\)"):
        hooks.before_snapshot(lambda: None)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="phase"):
        hooks.on_resume(lambda g: None, phase=3)  # type: ignore[call-overload]
    f = hooks.on_resume(lambda g: None)
    assert hooks.unregister(f) and hooks.lifecycle_hooks(HookKind.RESUME) == []


# Prepare and resume.


class Pool:
    """A stand-in for a connection pool: real sockets, closed before a snapshot."""

    def __init__(self) -> None:
        self.connections: list[socket.socket] = []
        self.opened = self.closed = 0
        self.open()

    def open(self, generation: int = 0) -> None:
        self.connections = [socket.socket() for _ in range(2)]
        self.opened += 1

    def close(self, generation: int = 0) -> None:
        for connection in self.connections:
            connection.close()
        self.connections = []
        self.closed += 1

    @property
    def is_open(self) -> bool:
        return bool(self.connections)


def pooled_hooks(pool: Pool, restores: list[int]) -> RestoreHooks:
    hooks = RestoreHooks()
    hooks.before_snapshot(pool.close, phase=Phase.CONNECTIONS)
    hooks.on_resume(pool.open, phase=Phase.CONNECTIONS)

    @hooks.register(phase=Phase.CONNECTIONS)
    def reopen(generation: int) -> None:
        restores.append(generation)
        if not pool.is_open:
            pool.open()

    return hooks


@pytest.mark.anyio
async def test_prepare_then_resume_through_the_command_line(
    backend: Backend, runtime: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pool, restores = Pool(), list[int]()
    async with restore_watcher(backend.path, hooks=pooled_hooks(pool, restores), service="api", runtime_dir=runtime):
        assert await run_cli("--runtime-dir", runtime, "prepare", "--timeout", "10") == EXIT_OK
        assert not pool.is_open and pool.closed == 1
        assert own_entry(runtime).state == WatcherState.PREPARED
        assert "api" in capsys.readouterr().out
        # A second prepare confirms without running the hooks again.
        assert await run_cli("--runtime-dir", runtime, "prepare", "--json") == EXIT_OK
        assert json.loads(capsys.readouterr().out)["reply"]["note"] == "already prepared" and pool.closed == 1
        assert await run_cli("--runtime-dir", runtime, "resume") == EXIT_OK
        assert pool.is_open and pool.opened == 2 and restores == []
        assert own_entry(runtime).state == WatcherState.READY
        # resume without a prepare: every process says so, and the command fails.
        assert await run_cli("--runtime-dir", runtime, "resume") == EXIT_LIFECYCLE_FAILED
        assert "not prepared" in capsys.readouterr().err
    pool.close()


@pytest.mark.anyio
async def test_prepare_and_resume_with_no_time_limit(backend: Backend, runtime: str) -> None:
    """``--timeout inf`` means no limit, as for every duration that can have none."""
    pool, restores = Pool(), list[int]()
    async with restore_watcher(backend.path, hooks=pooled_hooks(pool, restores), service="api", runtime_dir=runtime):
        assert await run_cli("--runtime-dir", runtime, "prepare", "--timeout", "inf") == EXIT_OK
        assert not pool.is_open and own_entry(runtime).state == WatcherState.PREPARED
        assert await run_cli("--runtime-dir", runtime, "resume", "--timeout", "inf") == EXIT_OK
        assert pool.is_open and own_entry(runtime).state == WatcherState.READY
    pool.close()


@pytest.mark.anyio
async def test_a_restore_after_prepare_counts_as_the_resume(backend: Backend, runtime: str) -> None:
    pool, restores = Pool(), list[int]()
    resumed: list[int] = []
    hooks = pooled_hooks(pool, restores)
    hooks.on_resume(resumed.append)
    async with restore_watcher(backend.path, hooks=hooks, runtime_dir=runtime) as watcher:
        assert await run_cli("--runtime-dir", runtime, "prepare") == EXIT_OK
        assert not pool.is_open
        new = backend.bump()  # the VM was snapshotted and this is a clone
        await until(lambda: watcher.acknowledged == new)
        assert restores == [new] and pool.is_open and resumed == []
        assert own_entry(runtime).state == WatcherState.READY
        assert await run_cli("--runtime-dir", runtime, "resume") == EXIT_LIFECYCLE_FAILED
    pool.close()


@pytest.mark.anyio
async def test_a_restore_during_prepare_cancels_the_prepare_and_the_restore_hooks_run_after_it(
    backend: Backend, runtime: str, capsys: pytest.CaptureFixture[str]
) -> None:
    hooks = RestoreHooks()
    events: list[str] = []
    bumped: list[int] = []

    @hooks.before_snapshot
    async def flush(generation: int) -> None:
        events.append("before-snapshot started")
        bumped.append(backend.bump())  # the snapshot was taken here, and this is a clone
        await anyio.sleep(5)  # the restore cancels the pass here, at its next checkpoint
        events.append("before-snapshot done")

    hooks.register(lambda generation: events.append(f"restore {generation}"), name="restore")
    async with restore_watcher(backend.path, hooks=hooks, runtime_dir=runtime) as watcher:
        assert await run_cli("--runtime-dir", runtime, "prepare") == EXIT_LIFECYCLE_FAILED
        await until(lambda: watcher.acknowledged == bumped[0])
        assert own_entry(runtime).state == WatcherState.READY
        assert await run_cli("--runtime-dir", runtime, "resume") == EXIT_LIFECYCLE_FAILED  # nothing to resume
    assert "a restore happened during prepare" in capsys.readouterr().err
    assert events == ["before-snapshot started", f"restore {bumped[0]}"], "the stale pass never ran on"


@pytest.mark.anyio
async def test_prepare_reports_the_failing_hooks_of_each_process(
    backend: Backend, runtime: str, capsys: pytest.CaptureFixture[str]
) -> None:
    hooks = RestoreHooks()

    @hooks.before_snapshot
    def flush(generation: int) -> None:
        raise OSError("disk full")

    async with restore_watcher(backend.path, hooks=hooks, service="ingest", runtime_dir=runtime):
        assert await run_cli("--runtime-dir", runtime, "prepare") == EXIT_LIFECYCLE_FAILED
    err = capsys.readouterr().err
    assert f"ingest (pid {os.getpid()})" in err and "flush: OSError('disk full')" in err


@pytest.mark.anyio
async def test_two_prepares_at_once_one_waits_for_none(backend: Backend, runtime: str) -> None:
    hooks = RestoreHooks()
    entered, release = threading.Event(), threading.Event()

    @hooks.before_snapshot
    async def slow(generation: int) -> None:
        entered.set()
        await anyio.to_thread.run_sync(release.wait)

    async with restore_watcher(backend.path, hooks=hooks, runtime_dir=runtime):
        statuses: list[int] = []
        async with anyio.create_task_group() as tasks:
            async def first() -> None:
                statuses.append(await run_cli("--runtime-dir", runtime, "prepare"))

            tasks.start_soon(first)
            await anyio.to_thread.run_sync(entered.wait)
            assert await run_cli("--runtime-dir", runtime, "prepare") == EXIT_BUSY
            assert await run_cli("--runtime-dir", runtime, "resume") == EXIT_BUSY
            release.set()
        assert statuses == [EXIT_OK]


def test_prepare_with_no_registered_watcher(runtime: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("--runtime-dir", runtime, "prepare") == EXIT_OK
    assert "no restore watcher is registered" in capsys.readouterr().out
    # A pipeline that needs at least one watcher says so.
    assert cli("--runtime-dir", runtime, "prepare", "--expect", "1") == EXIT_LIFECYCLE_FAILED
    assert "0 restore watcher(s) registered" in capsys.readouterr().err


@pytest.mark.parametrize("op", ["prepare", "resume"])
def test_a_registry_directory_that_does_not_exist_fails(op: str, capsys: pytest.CaptureFixture[str]) -> None:
    missing = "/tmp/sysgenid-async-a-typo-that-does-not-exist"
    assert cli("--runtime-dir", missing, op) == EXIT_LIFECYCLE_FAILED
    assert f"{op}: {missing}: no registry directory" in capsys.readouterr().err


@pytest.mark.anyio
async def test_expect_counts_the_registered_watchers(backend: Backend, runtime: str) -> None:
    async with restore_watcher(backend.path, hooks=RestoreHooks(), runtime_dir=runtime):
        assert await run_cli("--runtime-dir", runtime, "prepare", "--expect", "1") == EXIT_OK
        assert await run_cli("--runtime-dir", runtime, "resume", "--expect", "2") == EXIT_LIFECYCLE_FAILED


@pytest.mark.anyio
async def test_a_failed_prepare_leaves_the_process_failed_and_the_next_prepare_runs_the_hooks_again(
    backend: Backend, runtime: str, capsys: pytest.CaptureFixture[str]
) -> None:
    hooks = RestoreHooks()
    attempts: list[int] = []

    @hooks.before_snapshot
    def flush(generation: int) -> None:
        attempts.append(generation)
        if len(attempts) == 1:
            raise OSError("disk full")

    async with restore_watcher(backend.path, hooks=hooks, service="ingest", runtime_dir=runtime):
        assert await run_cli("--runtime-dir", runtime, "prepare") == EXIT_LIFECYCLE_FAILED
        entry = own_entry(runtime)
        assert entry.state == WatcherState.FAILED, "never prepared after a failure"
        assert entry.failing_hook == "flush" and "disk full" in str(entry.error)
        assert await run_cli("--runtime-dir", runtime, "prepare", "--json") == EXIT_OK
        assert len(attempts) == 2, "the retry ran the hooks again"
        assert "already prepared" not in capsys.readouterr().out
        entry = own_entry(runtime)
        assert entry.state == WatcherState.PREPARED and entry.failing_hook is None and entry.error is None
        assert await run_cli("--runtime-dir", runtime, "resume") == EXIT_OK


@pytest.mark.anyio
async def test_a_failed_prepare_can_be_resumed(backend: Backend, runtime: str) -> None:
    pool, restores = Pool(), list[int]()
    hooks = pooled_hooks(pool, restores)
    hooks.before_snapshot(lambda generation: (_ for _ in ()).throw(OSError("flush failed")), name="flush")
    async with restore_watcher(backend.path, hooks=hooks, runtime_dir=runtime):
        assert await run_cli("--runtime-dir", runtime, "prepare") == EXIT_LIFECYCLE_FAILED
        assert not pool.is_open, "the hooks that could run did"
        assert await run_cli("--runtime-dir", runtime, "resume") == EXIT_OK  # the pipeline gives up the snapshot
        assert pool.is_open and own_entry(runtime).state == WatcherState.READY
    pool.close()


@pytest.mark.anyio
async def test_a_prepare_out_of_time_names_the_hooks_it_did_not_run(
    backend: Backend, runtime: str, capsys: pytest.CaptureFixture[str]
) -> None:
    hooks = RestoreHooks()
    ran: list[str] = []

    @hooks.before_snapshot(phase=Phase.CONNECTIONS)
    async def drain(generation: int) -> None:
        await anyio.sleep(30)

    hooks.before_snapshot(lambda g: ran.append("flush"), phase=Phase.CACHES, name="flush")
    async with restore_watcher(backend.path, hooks=hooks, runtime_dir=runtime):
        assert await run_cli("--runtime-dir", runtime, "prepare", "--timeout", "0.2") == EXIT_LIFECYCLE_FAILED
        assert own_entry(runtime).state == WatcherState.FAILED
    err = capsys.readouterr().err
    assert "drain: TimeoutError" in err and "not run: flush" in err and ran == []


# Faults on the control channel.


@contextlib.contextmanager
def listening_socket(path: str, *, accept_and: str) -> Iterator[None]:
    """A fake process at ``path``: ``"ignore"`` accepts and never answers; ``"die"`` reads
    the request and closes without a reply, as a process that died during prepare."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                return
            if accept_and == "die":
                connection.recv(4096)
                connection.close()
            else:
                held.append(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)
        for connection in held:
            connection.close()


@pytest.mark.parametrize(("fault", "message"), [
    ("stale-socket", "connection refused (a stale socket"),
    ("no-socket", "no control socket"),
    ("never-answers", "no answer within 1.2 s"),
    ("dies", "closed without a reply"),
])
def test_prepare_names_a_process_that_cannot_confirm(
    runtime: str, fault: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = fake_entry(runtime, 5, service="stuck-service")
    path = str(Registry(runtime).socket_path(entry.pid, entry.instance))
    with contextlib.ExitStack() as stack:
        if fault == "stale-socket":  # bound once, nobody listening any more
            leftover = socket.socket(socket.AF_UNIX)
            leftover.bind(path)
            leftover.close()
        elif fault != "no-socket":
            stack.enter_context(listening_socket(path, accept_and="ignore" if fault == "never-answers" else "die"))
        assert cli("--runtime-dir", runtime, "prepare", "--timeout", "0.2") == EXIT_LIFECYCLE_FAILED
    err = capsys.readouterr().err
    assert f"stuck-service (pid {entry.pid})" in err and message in err


@pytest.mark.anyio
async def test_a_watcher_replaces_a_stale_socket_of_its_own_pid(backend: Backend, runtime: str) -> None:
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(Path(runtime) / f"{os.getpid()}.sock"))
    leftover.close()
    async with restore_watcher(backend.path, hooks=RestoreHooks(), runtime_dir=runtime):
        reply = await control.request(Path(runtime) / f"{os.getpid()}.sock", {"op": "status"}, 5)
        assert reply["ok"] and reply["pid"] == os.getpid()


async def raw_exchange(path: Path, payload: bytes, *, shut: bool = True) -> dict[str, object]:
    async with await anyio.connect_unix(path) as stream:
        if payload:
            await stream.send(payload)
        if shut:
            await stream.send_eof()
        data = b""
        with anyio.fail_after(10):
            with contextlib.suppress(anyio.EndOfStream):
                while not data.endswith(b"\n"):
                    data += await stream.receive()
    reply: dict[str, object] = json.loads(data)
    return reply


@pytest.mark.anyio
async def test_malformed_messages_get_an_error_reply_and_the_service_goes_on(
    backend: Backend, runtime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "REQUEST_SECONDS", 0.2)
    cases = [
        (b"not json\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"op": "explode"}\n', "op must be one of"),
        (b'{"op": "prepare", "timeout": -1}\n', "timeout must be a positive number"),
        (b'{"op": "prepare", "timeout": true}\n', "timeout must be a positive number"),
        (b"\n", "empty"),
        (b"x" * (control.MESSAGE_LIMIT + 10), "longer than 4096 bytes"),
        (b"\xff\xfe\n", "not JSON"),
    ]
    async with restore_watcher(backend.path, hooks=RestoreHooks(), runtime_dir=runtime) as watcher:
        path = Path(runtime) / f"{os.getpid()}.sock"
        for payload, expected in cases:
            reply = await raw_exchange(path, payload)
            assert reply["ok"] is False and expected in str(reply["error"]), (payload[:20], reply)
        silent = await raw_exchange(path, b"", shut=False)  # connects and says nothing
        assert silent == {"ok": False, "error": "no request within 0.2 s"}
        assert (await control.request(path, {"op": "status"}, 5))["ok"] is True
        new = backend.bump()  # and the watcher still does its job
        await until(lambda: watcher.acknowledged == new)


@pytest.mark.parametrize(("peer", "own", "allowed"), [(0, 1000, True), (1000, 1000, True), (1001, 1000, False),
                                                      (0, 0, True), (1000, 0, False)])
def test_only_the_same_user_or_root_may_control(peer: int, own: int, allowed: bool) -> None:
    assert control.peer_allowed(peer, own) is allowed


def python_for_anyone() -> str:
    """An interpreter another user may run (the suite's own may live under /root): the
    system's, whichever minor version the root has (Debian sid has no python3 link)."""
    found = sorted(glob.glob("/usr/bin/python3.[0-9]*"))
    candidates = ["/usr/bin/python3", *[f for f in found if re.fullmatch(r"/usr/bin/python3\.\d+", f)]]
    return next((c for c in candidates if os.path.exists(c)), sys.executable)


@pytest.mark.anyio
async def test_so_peercred_refuses_another_user_even_on_a_reachable_socket() -> None:
    if os.geteuid() != 0:
        pytest.skip("connecting as another user needs root (CI runs as root)")
    directory = tempfile.mkdtemp(prefix="sgp-", dir="/tmp")
    os.chmod(directory, 0o755)
    path = Path(directory) / "open.sock"
    asked: list[str] = []

    async def handler(op: str, message: object) -> dict[str, object]:
        asked.append(op)
        return {"ok": True}

    try:
        async with anyio.create_task_group() as tasks:
            await tasks.start(control.serve, path, handler)
            os.chmod(path, 0o666)  # reachable by anyone: only SO_PEERCRED stands in the way
            code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                    "s.sendall(b'{\"op\": \"prepare\"}\\n'); print(s.makefile().readline())")
            result = await anyio.to_thread.run_sync(lambda: subprocess.run(
                [python_for_anyone(), "-c", code, str(path)], user=NOBODY, capture_output=True, text=True,
                check=False))
            assert result.returncode == 0, result.stderr
            reply = json.loads(result.stdout)
            assert reply["ok"] is False and f"uid {NOBODY} may not control" in reply["error"]
            assert asked == []
            assert (await control.request(path, {"op": "status"}, 5))["ok"] is True  # root may
            assert asked == ["status"]
            tasks.cancel_scope.cancel()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# Named late watchers and readiness.


@pytest.mark.anyio
async def test_the_orchestrator_names_the_late_process_its_hook_and_error(
    backend: Backend, runtime: str, capsys: pytest.CaptureFixture[str]
) -> None:
    hooks = RestoreHooks()

    @hooks.register
    def rotate_keys(generation: int) -> None:
        raise OSError("vault unreachable")

    anonymous = backend.peer()  # a file opened outside the library, never acknowledging
    try:
        async with restore_watcher(backend.path, hooks=hooks, service="payments", retry=SLOW_RETRY,
                                   runtime_dir=runtime), \
                Orchestrator(backend.path, timeout=0.3, runtime_dir=runtime) as orchestrator:
            new = backend.bump()
            with anyio.fail_after(30):
                report = await orchestrator.handle_next()
            await until(lambda: own_entry(runtime).state == WatcherState.FAILED)
            assert await run_cli("--runtime-dir", runtime, "--device", backend.path, "status", "--watchers",
                                 "--json") == EXIT_OK
            status = json.loads(capsys.readouterr().out)
    finally:
        anonymous.close()
    assert report.generation == new and report.result is WaitResult.TIMED_OUT
    [late] = report.late_processes
    assert (late.pid, late.service, late.failing_hook) == (os.getpid(), "payments", "rotate_keys")
    assert late.error == "OSError('vault unreachable')"
    if backend.abi is Abi.V4:
        assert report.late_watchers == 2 and report.anonymous_late == 1
        assert status["anonymous_outdated"] == 1
    else:
        assert report.late_watchers is None and report.anonymous_late is None
    [row] = status["watchers"]
    assert row["service"] == "payments" and row["late"] is True and row["failing_hook"] == "rotate_keys"


@pytest.mark.anyio
async def test_wait_ready_waits_for_every_registered_watcher_and_writes_the_channel(
    backend: Backend, runtime: str, capsys: pytest.CaptureFixture[str]
) -> None:
    hooks = RestoreHooks()
    release = anyio.Event()

    @hooks.register
    async def warm_cache(generation: int) -> None:
        await release.wait()

    channel = Path(runtime) / "channel.out"
    async with restore_watcher(backend.path, hooks=hooks, service="cache", runtime_dir=runtime) as watcher:
        ready = ("--runtime-dir", runtime, "--device", backend.path, "wait-ready")
        assert await run_cli(*ready, "--timeout", "5") == EXIT_OK  # nothing pending
        capsys.readouterr()
        new = backend.bump()
        await until(lambda: own_entry(runtime).state == WatcherState.RESTORING)
        assert await run_cli(*ready, "--timeout", "0.2") == EXIT_TIMED_OUT
        assert f"late: cache (pid {os.getpid()}, restoring)" in capsys.readouterr().err
        release.set()
        assert await run_cli(*ready, "--timeout", "30", "--channel", str(channel), "--json") == EXIT_OK
        assert watcher.acknowledged == new
    [line] = channel.read_text().splitlines()
    record = json.loads(line)
    assert record["generation"] == new and record["ready"] is True and record["watchers"] == 1


def test_wait_ready_with_a_bad_channel(backend: Backend, runtime: str, capsys: pytest.CaptureFixture[str]) -> None:
    # A channel that cannot be opened is an error of the run (1); one that is malformed, of usage (2).
    for spec, status, message in [("/nonexistent-dir/port", 1, "cannot open the channel"),
                                  ("vsock:x:1", 2, "vsock:CID:PORT")]:
        assert cli("--runtime-dir", runtime, "--device", backend.path, "wait-ready", "--channel", spec) == status
        assert message in capsys.readouterr().err


@pytest.mark.anyio
async def test_systemd_hears_reloading_on_a_change_and_ready_when_the_hooks_are_done(
    backend: Backend, runtime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(Path(runtime) / "notify"))
    notify.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", str(Path(runtime) / "notify"))
    hooks = RestoreHooks()
    seen: list[int] = []
    hooks.register(seen.append)
    try:
        async with restore_watcher(backend.path, hooks=hooks, runtime_dir=runtime) as watcher:
            new = backend.bump()
            await until(lambda: watcher.acknowledged == new)
            reloading = notify.recv(4096).decode().split("\n")
            ready = notify.recv(4096).decode()
    finally:
        notify.close()
    assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
    assert ready == "READY=1" and seen == [new]


@pytest.mark.anyio
async def test_wait_ready_follow_holds_no_watcher_that_falls_behind(backend: Backend, runtime: str) -> None:
    """``wait-ready --follow`` runs beside the services for ever: on v4 a file it kept open
    would be a watcher left behind at the first change, holding every orchestrator back."""
    read_end, write_end = os.pipe()
    hooks = RestoreHooks()
    statuses: list[int] = []
    follow = ("--runtime-dir", runtime, "--device", backend.path, "wait-ready", "--follow", "--json",
              "--channel", f"/proc/self/fd/{write_end}")
    with os.fdopen(read_end, "rb") as lines:
        async with restore_watcher(backend.path, hooks=hooks, runtime_dir=runtime) as watcher, \
                anyio.create_task_group() as tasks:
            async def run_follow() -> None:
                statuses.append(await run_cli(*follow))

            tasks.start_soon(run_follow)
            try:
                first = json.loads(await anyio.to_thread.run_sync(lines.readline))
                os.close(write_end)  # the command has its own descriptor of the pipe
                new = backend.bump()
                await until(lambda: watcher.acknowledged == new)
                second = json.loads(await anyio.to_thread.run_sync(lines.readline))
                assert first["generation"] != new and second["generation"] == new and second["ready"]
                if backend.abi is Abi.V4:  # the kernel's word: nobody is behind, the command included
                    with BlockingSysGenID.open(backend.path) as probe:
                        result = await anyio.to_thread.run_sync(probe.wait_watchers, 2)
                    assert result is WaitResult.CAUGHT_UP
            finally:
                lines.close()  # the next report then fails on a broken pipe, and the command ends
                backend.bump()
        assert statuses == [1]
