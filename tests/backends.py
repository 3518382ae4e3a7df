"""The devices the suite runs against: the simulator (v4, v8) and the kernel module (v4, v8).

A test takes the ``backend`` fixture and speaks to ``backend.path`` (through the
library) or ``backend.open_raw()`` (raw syscalls). Everything a test needs that is
not the device's own interface (a privileged bump, a watcher in another process, an
unprivileged caller) goes through the backend, so one test function runs unchanged
on every backend: that is what proves the simulator faithful.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from sysgenid_async import uapi
from sysgenid_async.rawfile import KernelFile, RawFile
from sysgenid_async.testing import TRIGGER_CAPABILITIES, Flavour, Quirk, SimulatedDevice, SimulatedFile
from sysgenid_async.uapi import Abi

HERE = Path(__file__).resolve().parent
SIM_PATH = "/dev/sysgenid-simulated"
KERNEL_PATH = "/dev/sysgenid"
NOBODY = 65534


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """What a backend name says: ``sim-v4``, ``kernel-v8``, ``sim-amazon-linux``, ``kernel-v4-patch``...

    ``v4`` and ``v8`` are the project's own module (or simulator) in that ABI; a flavour name
    is the project's module behaving as that shipped driver. A *foreign* kernel module (not
    ours, given with ``--kernel-module``) has the flavour of the named driver it is
    (``--kernel-driver``), or None when unknown.
    """

    name: str
    kind: str  # "sim" or "kernel"
    abi: Abi
    flavour: Flavour | None
    foreign: bool = False

    @classmethod
    def parse(cls, name: str, *, foreign_driver: str | None = None) -> BackendSpec:
        kind, _, rest = name.partition("-")
        if kind not in ("sim", "kernel"):
            raise ValueError(f"backend {name!r}: not sim-... or kernel-...")
        if foreign_driver is not None:
            flavour = None if foreign_driver == "unknown" else Flavour(foreign_driver)
            return cls(name, kind, Abi(rest), flavour, foreign=True)
        if rest in ("v4", "v8"):
            return cls(name, kind, Abi(rest), Flavour.SYSGENID_ASYNC)
        flavour = Flavour(rest)
        assert flavour.abi is not None, "a shipped driver speaks one ABI"
        return cls(name, kind, flavour.abi, flavour)

    @property
    def quirks(self) -> frozenset[Quirk]:
        return self.flavour.quirks if self.flavour is not None else frozenset()


class Peer(Protocol):
    """A watcher held by another process."""

    def read(self) -> int | None: ...

    def ack(self) -> int | None: ...

    def track(self, on: bool) -> None: ...

    def close(self) -> None: ...


class Worker(Protocol):
    """A service with its own restore watcher (tests/restore_worker.py)."""

    def wait_for(self, line: str, timeout: float = 60) -> None: ...

    def close(self) -> None: ...


class _LineLog:
    """Lines a worker said, waited on from the test."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._cond = threading.Condition()

    def say(self, line: str) -> None:
        with self._cond:
            self._lines.append(line)
            self._cond.notify_all()

    def wait_for(self, line: str, timeout: float = 60) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: line in self._lines, timeout):
                raise AssertionError(f"the worker never said {line!r}; it said {self._lines}")


class SimWorker(_LineLog):
    def __init__(self, path: str, behaviour: str) -> None:
        super().__init__()
        import anyio

        from restore_worker import serve

        self._stop = threading.Event()
        self._thread = threading.Thread(target=anyio.run, args=(serve, path, behaviour, self.say, self._stop.wait))
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(60)


class KernelWorker(_LineLog):
    def __init__(self, path: str, behaviour: str) -> None:
        super().__init__()
        self._process = subprocess.Popen(
            [sys.executable, str(HERE / "restore_worker.py"), path, behaviour],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self._reader = threading.Thread(target=self._read)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.say(line.strip())

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(60)
        self._reader.join(60)
        assert self._process.stdout is not None
        self._process.stdout.close()


class Backend(Protocol):
    name: str
    abi: Abi
    path: str
    kernel: bool
    spec: BackendSpec

    @property
    def quirks(self) -> frozenset[Quirk]: ...

    def open_raw(self, *, readonly: bool = False, nonblock: bool = True) -> RawFile: ...

    def bump(self, min_generation: int = 0) -> int: ...

    @property
    def generation(self) -> int: ...

    def open_files(self) -> int: ...

    def peer(self, *, track: bool = True) -> Peer: ...

    def worker(self, behaviour: str) -> Worker:
        """A service with its own restore watcher and one hook: ok, slow or fail."""

    def trigger_with(self, capabilities: frozenset[str], min_generation: int = 0) -> int:
        """Trigger as a caller holding only ``capabilities``; returns 0 or the errno."""

    def run_unprivileged(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        """Run the CLI as a caller without the trigger capabilities."""


# -- the simulator ------------------------------------------------------------------------


class SimPeer:
    def __init__(self, file: SimulatedFile, track: bool) -> None:
        self._file = file
        if track and file._device.abi is Abi.V8:
            file.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, 1)

    def read(self) -> int | None:
        try:
            return int.from_bytes(self._file.read(4), sys.byteorder)
        except BlockingIOError:
            return None

    def ack(self) -> int | None:
        value = self.read()
        if value is not None:
            self._file.write(value.to_bytes(4, sys.byteorder))
        return value

    def track(self, on: bool) -> None:
        self._file.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, int(on))

    def close(self) -> None:
        self._file.close()


class SimBackend:
    kernel = False

    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec
        self.abi = spec.abi
        self.name = spec.name
        self.path = SIM_PATH
        self.sim = SimulatedDevice(spec.abi, flavour=spec.flavour or Flavour.SYSGENID_ASYNC)

    @property
    def quirks(self) -> frozenset[Quirk]:
        return self.spec.quirks

    def open_raw(self, *, readonly: bool = False, nonblock: bool = True) -> RawFile:
        return self.sim.open_file(readonly=readonly, nonblock=nonblock)

    def bump(self, min_generation: int = 0) -> int:
        return self.sim.bump(min_generation)

    @property
    def generation(self) -> int:
        return self.sim.generation

    def open_files(self) -> int:
        return self.sim.open_files

    def peer(self, *, track: bool = True) -> Peer:
        return SimPeer(self.sim.open_file(), track)

    def worker(self, behaviour: str) -> Worker:
        return SimWorker(self.path, behaviour)

    def trigger_with(self, capabilities: frozenset[str], min_generation: int = 0) -> int:
        saved = self.sim.capabilities
        self.sim.capabilities = capabilities
        file = self.sim.open_file()
        try:
            file.ioctl(self.abi.trigger_request, min_generation)
        except OSError as exc:
            return exc.errno or -1
        finally:
            file.close()
            self.sim.capabilities = saved
        return 0

    def run_unprivileged(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        # The simulator lives in this process: run the CLI here, with no capabilities.
        import contextlib
        import io

        from sysgenid_async.cli import cli

        saved = self.sim.capabilities
        self.sim.capabilities = frozenset()
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = cli("--device", self.path, *args)
        finally:
            self.sim.capabilities = saved
        return subprocess.CompletedProcess(args, status, out.getvalue(), err.getvalue())

    def installed(self) -> Iterator[SimBackend]:
        with self.sim.installed(self.path, set_env=False):
            yield self


# -- the kernel module --------------------------------------------------------------------


class KernelPeer:
    def __init__(self, path: str, track: bool) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-I", str(HERE / "peer_process.py"), path, *(["track"] if track else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self._ask(None) == "ready"

    def _ask(self, command: str | None) -> str:
        assert self._process.stdin is not None and self._process.stdout is not None
        if command is not None:
            self._process.stdin.write(command + "\n")
            self._process.stdin.flush()
        line = self._process.stdout.readline().strip()
        if not line:
            raise RuntimeError(f"peer process died (exit {self._process.wait()})")
        return line

    def read(self) -> int | None:
        answer = self._ask("read")
        return None if answer == "none" else int(answer)

    def ack(self) -> int | None:
        answer = self._ask("ack")
        return None if answer == "none" else int(answer.split()[1])

    def track(self, on: bool) -> None:
        assert self._ask(f"track {int(on)}") == "ok"

    def close(self) -> None:
        if self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.write("quit\n")
            self._process.stdin.close()
            self._process.wait(30)
        if self._process.stdout is not None:
            self._process.stdout.close()


_CAPS = {"CAP_CHECKPOINT_RESTORE": "checkpoint_restore", "CAP_SYS_ADMIN": "sys_admin"}


def top_of(backend: Backend) -> int:
    """Where ``trigger(value)`` changes nothing: the u32 top, or a signed int's on a driver that
    computes in one (there the counter goes higher only when forced)."""
    return 2**31 - 1 if Quirk.SIGNED_COUNTER in backend.quirks else 2**32 - 1


def start_low(backend: Backend) -> None:
    """Bring the counter to 0, whatever earlier tests left (a device keeps it between tests),
    so that a test's minimum decides the next value."""
    backend.bump(top_of(backend))
    assert backend.bump(0) == 0


def _setpriv(capabilities: frozenset[str]) -> list[str]:
    command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if capabilities:
        names = ",".join(f"+{_CAPS[c]}" for c in sorted(capabilities))
        command += [f"--inh-caps={names}", f"--ambient-caps={names}"]
    return command


class KernelBackend:
    kernel = True

    def __init__(self, spec: BackendSpec, module_name: str = "sysgenid") -> None:
        self.spec = spec
        self.abi = spec.abi
        self.name = spec.name
        self.path = KERNEL_PATH
        self.module_name = module_name

    @property
    def quirks(self) -> frozenset[Quirk]:
        return self.spec.quirks

    @contextlib.contextmanager
    def open_to_all(self) -> Iterator[None]:
        """Make the node readable and writable by everyone, as a udev rule would, for a while.

        For tests that open the device as an unprivileged user: a driver's 0600 node would
        refuse them at open, before the behaviour under test.
        """
        mode = os.stat(self.path).st_mode & 0o7777
        os.chmod(self.path, 0o666)
        try:
            yield
        finally:
            os.chmod(self.path, mode)

    def open_raw(self, *, readonly: bool = False, nonblock: bool = True) -> RawFile:
        return KernelFile.open(self.path, readonly=readonly, nonblock=nonblock)

    def bump(self, min_generation: int = 0) -> int:
        file = KernelFile.open(self.path)
        try:
            file.ioctl(self.abi.trigger_request, min_generation)
        finally:
            file.close()
        return self.generation

    @property
    def generation(self) -> int:
        file = KernelFile.open(self.path, readonly=True)
        try:
            page = file.map_page()
            value = int(page.cast("I")[0])
            page.release()
            return value
        finally:
            file.close()

    def open_files(self) -> int:
        return int(Path(f"/sys/module/{self.module_name}/refcnt").read_text())

    def peer(self, *, track: bool = True) -> Peer:
        return KernelPeer(self.path, track and self.abi is Abi.V8)

    def worker(self, behaviour: str) -> Worker:
        return KernelWorker(self.path, behaviour)

    def trigger_with(self, capabilities: frozenset[str], min_generation: int = 0) -> int:
        script = textwrap.dedent(f"""
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open({self.path!r}, os.O_RDWR)
            rc = libc.ioctl(fd, ctypes.c_ulong({self.abi.trigger_request}), ctypes.c_ulong({min_generation}))
            print(0 if rc == 0 else ctypes.get_errno())
        """)
        with self.open_to_all():
            done = subprocess.run(
                [*_setpriv(capabilities), sys.executable, "-I", "-c", script],
                capture_output=True, text=True, check=False, timeout=60,
            )
        if done.returncode != 0:
            raise RuntimeError(f"unprivileged helper failed: {done.stderr}")
        return int(done.stdout)

    def run_unprivileged(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        with self.open_to_all():
            return subprocess.run(
                [*_setpriv(frozenset()), sys.executable, "-m", "sysgenid_async", "--device", self.path, *args],
                capture_output=True, text=True, check=False, timeout=120,
                env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
            )


def is_our_module(module: str) -> bool:
    """Whether the .ko is the project's module (it has the flavour= parameter)."""
    params = subprocess.run(["modinfo", "-F", "parm", module], capture_output=True, text=True, check=True).stdout
    return any(line.startswith("flavour:") for line in params.splitlines())


def load_module(module: str, spec: BackendSpec, *, abi_param: bool) -> str:
    """insmod the module as ``spec`` says, unloading any loaded copy; returns its name."""
    name = subprocess.run(["modinfo", "-F", "name", module], capture_output=True, text=True, check=True).stdout.strip()
    name = name or Path(module).stem
    if Path(f"/sys/module/{name}").exists():
        subprocess.run(["rmmod", name], check=True)
    params = [f"abi={spec.abi.value[1:]}"] if abi_param else []
    if not spec.foreign and spec.flavour not in (None, Flavour.SYSGENID_ASYNC):
        params.append(f"flavour={spec.flavour.value}")
    subprocess.run(["insmod", module, *params], check=True)
    if not Path(KERNEL_PATH).exists():
        raise RuntimeError(f"insmod {module} created no {KERNEL_PATH}")
    return name


def unload_module(name: str) -> None:
    subprocess.run(["rmmod", name], check=True)


def errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


__all__ = [
    "TRIGGER_CAPABILITIES", "Backend", "BackendSpec", "KernelBackend", "Peer", "SimBackend", "is_our_module",
    "load_module", "unload_module",
]
