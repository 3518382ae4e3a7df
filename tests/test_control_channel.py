"""The control channel never takes the restore watcher down.

A service runs in a child process with a soft limit of 256 file descriptors (as a container or
a systemd unit may set), restoring itself every 0.2 s. Then another process of the same user
floods its control socket with 1000 idle connections, or the service runs out of descriptors
by itself; either way it must stay up, its restore hooks must keep running, and a ``prepare``
must succeed once the flood or the shortage ends. Peers that stay silent, stop mid-line or
leave mid-reply, and connections beyond the cap, are refused without harm.
"""

from __future__ import annotations

import contextlib
import json
import queue
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from backends import Backend
from sysgenid_async.cli import EXIT_OK, cli
from sysgenid_async.restore import RestoreHooks, control, restore_watcher
from sysgenid_async.restore.registry import Registry

FD_LIMIT = 256
FLOOD = 1000

# The service: a restore watcher on the device (its own simulator on the host, whose
# restores it makes itself), a hook that reports each restore, and a command on stdin.
SERVICE = r"""
import contextlib, os, resource, sys, anyio
from sysgenid_async.device import Device
from sysgenid_async.restore import RestoreHooks, restore_watcher
from sysgenid_async.testing import SimulatedDevice

path, runtime, loop, simulated = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "sim"
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, hard))
hooks = RestoreHooks()
hooks.register(lambda generation: print("restored", generation, flush=True), name="report")
hooks.before_snapshot(lambda generation: print("prepared", generation, flush=True), name="flush")
hoard = []

async def main():
    async with restore_watcher(path, hooks=hooks, runtime_dir=runtime, service="flooded"), \
            anyio.create_task_group() as tasks:
        async def restore_now_and_then():
            with Device.open(path, watcher=False) as device:
                while True:
                    await anyio.sleep(0.2)
                    device.trigger()
        tasks.start_soon(restore_now_and_then)
        print("ready", os.getpid(), flush=True)
        while True:
            command = (await anyio.to_thread.run_sync(sys.stdin.readline)).strip()
            if command == "hoard":  # the service's own work takes every descriptor left
                with contextlib.suppress(OSError):
                    while True:
                        hoard.append(os.open("/dev/null", os.O_RDONLY))
                print("hoarding", len(hoard), flush=True)
            elif command == "release":
                while hoard:
                    os.close(hoard.pop())
                print("released", flush=True)
            else:
                tasks.cancel_scope.cancel()
                return

options = {{"use_uvloop": True}} if loop == "uvloop" else {{}}
context = SimulatedDevice().installed(path) if simulated else contextlib.nullcontext()
with context:
    anyio.run(main, backend="trio" if loop == "trio" else "asyncio", backend_options=options)
"""


class Service:
    """The child process, and its lines as they come."""

    def __init__(self, backend: Backend, runtime: str, loop: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVICE.format(limit=FD_LIMIT), backend.path, runtime, loop,
             "kernel" if backend.kernel else "sim"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        first = self.next_line(60)
        assert first.startswith("ready"), first
        self.pid = int(first.split()[1])
        self.socket = Registry(runtime).socket_path(self.pid, 0)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def next_line(self, timeout: float) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the service said nothing for {timeout} s; alive: {self.alive}") from None

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def restores_within(self, seconds: float) -> int:
        """How many restore passes the service reported in the next ``seconds``."""
        deadline = time.monotonic() + seconds
        count = 0
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(queue.Empty):
                count += self.lines.get(timeout=left).startswith("restored")
        return count

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> str:
        if self.alive:
            self.send("stop")
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        assert self.process.stdin and self.process.stdout and self.process.stderr
        self.process.stdin.close()
        errors = self.process.stderr.read()
        self.process.stderr.close()
        self._reader.join(30)  # it ends at the end of the output
        self.process.stdout.close()
        return errors


@pytest.fixture
def runtime() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="sgf-", dir="/tmp")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def enough_descriptors() -> Iterator[None]:
    """This process opens the flood: let it hold FLOOD sockets and more."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * FLOOD)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def prepare_succeeds(runtime: str, within: float = 30) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if cli("--runtime-dir", runtime, "prepare", "--expect", "1", "--timeout", "10") == EXIT_OK:
            return True
        time.sleep(0.5)
    return False


@pytest.fixture(params=["asyncio", "uvloop", "trio"])
def loop(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.only_abi("v8")  # the control server's behaviour; the ABI plays no part
def test_a_flood_of_idle_connections_beyond_the_fd_limit_leaves_restores_running(
    backend: Backend, runtime: str, loop: str, enough_descriptors: None
) -> None:
    service = Service(backend, runtime, loop)
    flood: list[socket.socket] = []
    try:
        for _ in range(FLOOD):
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            peer.settimeout(5)
            peer.connect(str(service.socket))  # then never a byte
            flood.append(peer)
        assert service.restores_within(1.5) >= 3, "restores stopped during the flood"
        assert service.alive, "the service died under the flood"
    finally:
        for peer in flood:
            peer.close()
    assert prepare_succeeds(runtime), "prepare never succeeded after the flood"
    assert service.alive
    assert "Traceback" not in service.stop()


@pytest.mark.only_abi("v8")
def test_a_service_out_of_descriptors_keeps_restoring_and_answers_once_it_has_some(
    backend: Backend, runtime: str, loop: str
) -> None:
    service = Service(backend, runtime, loop)
    service.send("hoard")
    while not service.next_line(30).startswith("hoarding"):
        pass
    peers = []
    for _ in range(20):  # each accept fails with EMFILE now
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        peer.connect(str(service.socket))
        peers.append(peer)
    assert service.restores_within(1.5) >= 3, "restores stopped when the descriptors ran out"
    assert service.alive, "the service died when accept() failed with EMFILE"
    for peer in peers:
        peer.close()
    service.send("release")
    assert prepare_succeeds(runtime), "prepare never succeeded once descriptors were free again"
    stderr = service.stop()
    assert "cannot accept" in stderr and "Traceback" not in stderr, stderr


# -- peers that misbehave, and the cap, in this process ------------------------------------------


async def connected(path: Path) -> anyio.abc.SocketStream:
    return await anyio.connect_unix(path)


@pytest.mark.once_per_abi
@pytest.mark.anyio
@pytest.mark.parametrize("peer", ["silent", "half a line", "gone mid-reply"])
async def test_a_misbehaving_peer_leaves_the_watcher_serving(backend: Backend, runtime: str, peer: str) -> None:
    hooks = RestoreHooks()
    restores: list[int] = []
    hooks.register(restores.append)

    @hooks.before_snapshot
    async def flush(generation: int) -> None:
        await anyio.sleep(0.2)  # the reply is still to come when the peer leaves

    async with restore_watcher(backend.path, hooks=hooks, runtime_dir=runtime) as watcher:
        assert watcher.lifecycle is not None and watcher.lifecycle.socket_path is not None
        path = watcher.lifecycle.socket_path
        stream = await connected(path)
        if peer == "half a line":
            await stream.send(b'{"op": "prep')
        elif peer == "gone mid-reply":
            await stream.send(b'{"op": "prepare"}\n')
            await anyio.sleep(0.05)
            await stream.aclose()
        new = backend.bump()
        with anyio.fail_after(30):
            while watcher.acknowledged != new:  # noqa: ASYNC110 - the watcher exposes no event
                await anyio.sleep(0.01)
        assert restores == [new]
        reply = await control.request(path, {"op": "status"}, 10)
        assert reply["ok"] and reply["control"] == "up"
        if peer != "gone mid-reply":
            await stream.aclose()
        with anyio.fail_after(30):
            while True:
                reply = await control.request(path, {"op": "prepare", "timeout": 10}, 20)
                if reply["ok"]:
                    break
                await anyio.sleep(0.1)  # the first prepare (gone mid-reply) is still running


@pytest.mark.once_per_abi
@pytest.mark.anyio
async def test_connections_beyond_the_cap_are_refused_at_once(backend: Backend, runtime: str) -> None:
    async with restore_watcher(backend.path, hooks=RestoreHooks(), runtime_dir=runtime) as watcher:
        assert watcher.lifecycle is not None and watcher.lifecycle.socket_path is not None
        path = watcher.lifecycle.socket_path
        held = [await connected(path) for _ in range(control.MAX_CONNECTIONS)]
        await anyio.sleep(0.2)  # every one of them accepted, each waiting for its request
        with anyio.fail_after(2):  # well before the held ones time out (5 s)
            extra = await connected(path)
            line = await extra.receive()
        reply = json.loads(line)
        assert not reply["ok"] and "busy" in reply["error"] and str(control.MAX_CONNECTIONS) in reply["error"]
        await extra.aclose()
        for stream in held:
            await stream.aclose()
        with anyio.fail_after(30):
            while not (await control.request(path, {"op": "status"}, 10))["ok"]:  # noqa: ASYNC110
                await anyio.sleep(0.05)


@pytest.mark.once_per_abi
@pytest.mark.anyio
async def test_a_failing_server_is_started_again_and_the_entry_says_so_meanwhile(
    backend: Backend, runtime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sysgenid_async.restore import lifecycle

    failures = anyio.Event()
    binding_fails = True
    real_accept_loop, real_listener = control._accept_loop, anyio.create_unix_listener
    calls = 0

    async def failing_once(*args: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("the listening socket broke")  # as a server bug would, after it started
        await real_accept_loop(*args)  # type: ignore[arg-type]

    async def listener_unless_failing(*args: object, **kwargs: object) -> object:
        if calls >= 1 and binding_fails:
            failures.set()
            raise OSError("cannot bind the control socket again")
        return await real_listener(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(control, "_accept_loop", failing_once)
    monkeypatch.setattr(anyio, "create_unix_listener", listener_unless_failing)
    monkeypatch.setattr(lifecycle, "CONTROL_RESTART_SECONDS", (0.01, 0.02))
    restores: list[int] = []
    hooks = RestoreHooks()
    hooks.register(restores.append)
    async with restore_watcher(backend.path, hooks=hooks, runtime_dir=runtime) as watcher:
        await failures.wait()
        (entry,) = Registry(runtime).entries()
        assert entry.control == "down", "the entry says the channel is down while it is"
        new = backend.bump()  # restores go on without the channel
        with anyio.fail_after(30):
            while watcher.acknowledged != new:  # noqa: ASYNC110 - the watcher exposes no event
                await anyio.sleep(0.01)
        assert restores == [new]
        binding_fails = False
        with anyio.fail_after(30):
            while Registry(runtime).entries()[0].control != "up":  # noqa: ASYNC110 - files
                await anyio.sleep(0.01)
        assert watcher.lifecycle is not None and watcher.lifecycle.socket_path is not None
        reply = await control.request(watcher.lifecycle.socket_path, {"op": "status"}, 10)
        assert reply["ok"] and reply["control"] == "up"
    assert calls == 2


# -- what a restore pass opens ------------------------------------------------------------------

_opened: list[str] | None = None  # while a measurement runs: every file and socket the process opens
_counting: list[bool] = []


def _count_opens(event: str, args: tuple[object, ...]) -> None:
    if _opened is not None and event in ("open", "socket.__new__"):
        _opened.append(f"{event} {args[0] if event == 'open' else 'socket'}")


@pytest.mark.only_abi("v8")  # on v4 the device is the same, and so are the files a pass opens
@pytest.mark.anyio
async def test_what_a_restore_pass_opens(backend: Backend, runtime: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass of sync hooks opens the registry's temporary entry file twice (restoring, then
    ready), no socket and no device file; an async hook adds one device file (the probe that
    notices a newer generation meanwhile). Under descriptor exhaustion both are done without."""
    global _opened
    if not _counting:
        sys.addaudithook(_count_opens)  # cannot be removed: it counts only while _opened is a list
        _counting.append(True)
    from sysgenid_async.async_device import AsyncSysGenID

    device_files: list[str] = []
    real_open = AsyncSysGenID.open.__func__  # type: ignore[attr-defined]

    def counted_open(cls: type[AsyncSysGenID], /, *args: object, **kwargs: object) -> AsyncSysGenID:
        if _opened is not None:
            device_files.append(str(args[0] if args else kwargs.get("path")))
        return real_open(cls, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(AsyncSysGenID, "open", classmethod(counted_open))
    hooks = RestoreHooks()
    hooks.register(lambda generation: None, name="sync")
    measured: dict[str, tuple[list[str], list[str]]] = {}
    async with restore_watcher(backend.path, hooks=hooks, runtime_dir=runtime) as watcher:
        for kind in ("sync hooks", "an async hook"):
            if kind == "an async hook":

                @hooks.register
                async def reconnect(generation: int) -> None:
                    await anyio.lowlevel.checkpoint()

            _opened, device_files[:] = [], []
            new = backend.bump()
            with anyio.fail_after(30):
                while watcher.acknowledged != new:  # noqa: ASYNC110 - the watcher exposes no event
                    await anyio.sleep(0.01)
            measured[kind], _opened = (_opened, list(device_files)), None
    for kind, (opened, devices) in measured.items():
        others = [f for f in opened if not f.endswith(".tmp") and not f.endswith(backend.path)]
        entry_writes = [f for f in opened if f.endswith(".tmp")]
        assert len(entry_writes) == 2 and not others, (kind, opened)
        assert len(devices) == (1 if kind == "an async hook" else 0), (kind, devices)


@pytest.mark.once_per_abi
@pytest.mark.anyio
async def test_an_entry_that_could_not_be_written_is_written_again(
    backend: Backend, runtime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore while the registry cannot be written (no descriptor to spare, say) leaves the
    entry stale for a while, never for good: ``wait-ready`` would wait on it."""
    from sysgenid_async.restore import lifecycle

    real_announce = Registry.announce
    writable = True

    def announce_unless_out_of_descriptors(self: Registry, entry: object) -> None:
        if not writable:
            raise OSError(24, "Too many open files")
        real_announce(self, entry)  # type: ignore[arg-type]

    monkeypatch.setattr(Registry, "announce", announce_unless_out_of_descriptors)
    monkeypatch.setattr(lifecycle, "ANNOUNCE_RETRY_SECONDS", (0.01, 0.05))
    async with restore_watcher(backend.path, hooks=RestoreHooks(), runtime_dir=runtime) as watcher:
        writable = False
        new = backend.bump()
        with anyio.fail_after(30):
            while watcher.acknowledged != new:  # noqa: ASYNC110 - the watcher exposes no event
                await anyio.sleep(0.01)
        assert Registry(runtime).entries()[0].acknowledged != new, "the write failed: the entry is stale"
        writable = True
        with anyio.fail_after(30):
            while (entry := Registry(runtime).entries()[0]).acknowledged != new:  # noqa: ASYNC110 - files
                await anyio.sleep(0.01)
        assert entry.state == "ready"
