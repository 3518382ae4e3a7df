#!/usr/bin/env python3
"""The clone test: snapshot a running service, restore it as clones, prove they diverge.

1. Builds our module for Debian's generic kernel (it has CONFIG_VMGENID; the host's, or
   with ``--kernel sid`` the newest Debian kernel, built in that suite's root) and a
   self-contained initramfs: busybox, the module, Debian's python3.11 with a trimmed
   standard library, the library and its dependencies, and kernel/vm/clone_service.py.
2. Boots it under QEMU with ``-device vmgenid``; waits for the service's READY.
3. Snapshots it over QMP (stop, migrate to a file) and restores clones as new QEMU
   processes (``-incoming``), each with a new VM generation GUID; ``cont`` runs them.
4. Reads each clone's REPORT from the serial console, and checks: the generation changed,
   every hook ran once, the orchestrator saw every watcher catch up; across clones the
   ``random`` outputs and the generation-bound secrets differ.
5. The lifecycle: before the first snapshot the host asks the guest (over a virtio-serial
   control port) to run ``sysgenid-async prepare``: every registered process runs its
   before-snapshot hooks once, and the service's pool closes; after the snapshot the
   original VM goes on and ``sysgenid-async resume`` reopens it. In every clone a worker
   named ``slow-worker`` fails its restore hook once: the orchestrator must name it (pid,
   hook, error), and the host reads the clone's readiness from ``sysgenid-async wait-ready
   --follow`` on a second virtio-serial port, timing restore to ready.
6. One pass at a time: a clone is snapshotted while a slow restore pass runs (its hook drew
   its seed before the snapshot), and two clones of that snapshot are restored: each must end
   with its own newest generation's state, the two different, neither the stale seed. The same
   clone is also snapshotted between a failed ``prepare`` and its retry: the retry, in the
   original and in the clone, runs the before-snapshot hooks again.
7. Controls: the reseed hooks left out (``random`` and OpenSSL's ``RAND_bytes`` then stay
   identical across clones), a restore that keeps the GUID (no change), and a clone of a clone
   (a second bump); and the module in its v8 personality, cloned once.

Prints a table and writes build/clones/results.json. Root; installs what it needs.
Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # suites.py, beside this script
import suites

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
PACKAGES = ["qemu-system-x86", "busybox-static", "cpio", "kmod", "gcc", "libc6-dev",
            "python3.11"]  # Debian's interpreter and standard library, for the guest's root
HOST_KERNEL_PACKAGES = ["linux-image-amd64", "linux-headers-amd64"]  # the host's generic kernel
PYTHON = Path("/usr/bin/python3.11")  # Debian's: libpython linked in, few shared libraries
STDLIB_LEFT_OUT = {
    "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "distutils",
    "__pycache__", "site-packages", "dist-packages", "unittest", "sqlite3", "dbm", "curses",
}
# anyio imports ssl, so _ssl (and OpenSSL) stay
DYNLOAD_LEFT_OUT = re.compile(r"^(_sqlite3|_tkinter|_curses|readline|_dbm|nis|_test|xxlimited|_xx|"
                              r"audioop|ossaudiodev|_ctypes_test|_crypt)")
# Ports of the guest's virtio-serial device, by name (the guest finds them in /sys/class/virtio-ports).
READY_PORT = "org.sysgenid-async.ready"
CONTROL_PORT = "org.sysgenid-async.control"
# Kernel modules for virtio-serial; whichever the kernel builds in are left out.
VIRTIO_SERIAL_MODULES = ["virtio_pci", "virtio_console"]
# The library's dependencies and theirs, as far as Python 3.11 needs them (older anyio
# releases also need sniffio); whichever of these the environment has is copied.
SITE_PACKAGES = ["anyio", "sniffio", "idna", "typing_extensions.py"]


#: Serial lines whose last field is the guest's CLOCK_MONOTONIC in ns: the C watcher's ack and
#: its clock burst (clone_watcher.c), the library watcher's ack (clone_service.py --ack-timer), a
#: bare asyncio callback's (--bare-timer).
CLOCK_LINE = re.compile(r"^(C-ACK \d+|PY-ACK \d+|LIB-ACK \d+|CLOCK) \d+$")


def log(message: str) -> None:
    print(f"[clones] {message}", flush=True)


def ensure_packages(packages: list[str]) -> None:
    missing = [p for p in packages if "install ok installed" not in subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True, check=False).stdout]
    if missing:
        log(f"installing {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True, env=env)


def generic_kernel(suite: str) -> suites.Kernel:
    try:
        kernel = suites.suite_kernel(suite, "generic")
    except suites.SuiteError as exc:
        sys.exit(f"[clones] {exc}")
    if "CONFIG_VMGENID=y" not in kernel.config.read_text():
        sys.exit(f"[clones] {kernel.release} has no CONFIG_VMGENID: clones would not notice their restore")
    return kernel


def build_module(kernel: suites.Kernel, work: Path) -> Path:
    try:
        module = suites.build_module(kernel, PROJECT / "kernel", work / "module", [])
    except suites.SuiteError as exc:
        sys.exit(f"[clones] {exc}")
    return module


def shared_libraries(binary: Path) -> list[Path]:
    output = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
    found = re.findall(r"(/\S+\.so[\S]*)", output)
    return [Path(p) for p in found if Path(p).exists()]


def site_packages() -> Path:
    import anyio  # noqa: F401 - the interpreter running this has the dependencies (the nox venv)

    return Path(sys.modules["anyio"].__file__ or "").resolve().parent.parent


def copy_virtio_serial_modules(kernel: suites.Kernel, root: Path) -> None:
    """Copy the modules virtio-serial needs, uncompressed, in load order (root/modules/order)."""
    target = root / "modules"
    target.mkdir()
    order: list[str] = []
    for name in VIRTIO_SERIAL_MODULES:
        shown = subprocess.run(["modprobe", "-d", str(kernel.modules_base), "-S", kernel.release, "--show-depends",
                                name], capture_output=True, text=True, check=False)
        if shown.returncode != 0:
            log(f"{name} is no module of {kernel.release}: taken as built in")
            continue
        for line in shown.stdout.splitlines():
            parts = line.split()
            if len(parts) < 2 or parts[0] != "insmod":
                continue
            source = Path(parts[1])
            data = source.read_bytes()
            if source.suffix == ".xz":
                import lzma

                data = lzma.decompress(data)
            elif source.suffix == ".zst":
                data = subprocess.run(["zstd", "-qdc", str(source)], capture_output=True, check=True).stdout
            stem = source.name.split(".ko")[0] + ".ko"
            if stem not in order:
                (target / stem).write_bytes(data)
                order.append(stem)
    (target / "order").write_text("".join(f"{m}\n" for m in order))


def build_image(kernel: suites.Kernel, module: Path, work: Path) -> Path:
    root = work / "rootfs"
    shutil.rmtree(root, ignore_errors=True)
    for directory in ("bin", "usr/bin", "site", "proc", "sys", "dev", "tmp", "root", "run"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    copy_virtio_serial_modules(kernel, root)
    shutil.copy("/bin/busybox", root / "bin/busybox")
    shutil.copy(PYTHON, root / "usr/bin/python3.11")
    stdlib = Path("/usr/lib/python3.11")
    shutil.copytree(stdlib, root / "usr/lib/python3.11", symlinks=True,
                    ignore=lambda d, names: [n for n in names if (Path(d) == stdlib and n in STDLIB_LEFT_OUT)
                                             or n == "__pycache__" or DYNLOAD_LEFT_OUT.match(n)])
    libraries = set(shared_libraries(PYTHON))
    for extension in (root / "usr/lib/python3.11/lib-dynload").glob("*.so"):
        libraries.update(shared_libraries(Path("/usr/lib/python3.11/lib-dynload") / extension.name))
    for library in libraries:
        target = root / library.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(library.resolve(), target)
    packages = site_packages()
    for name in SITE_PACKAGES:
        source = packages / name
        if source.is_dir():
            shutil.copytree(source, root / "site" / name)
        elif source.exists():
            shutil.copy(source, root / "site" / name)
    shutil.copytree(PROJECT / "src" / "sysgenid_async", root / "site" / "sysgenid_async")
    shutil.copy(module, root / "sysgenid.ko")
    shutil.copy(HERE / "clone_service.py", root / "clone_service.py")
    subprocess.run(["gcc", "-O2", "-static", "-Wall", "-Werror", "-o", str(root / "clone_watcher"),
                    str(HERE / "clone_watcher.c")], check=True)
    shutil.copy(HERE / "clone-init", root / "init")
    os.chmod(root / "init", 0o755)
    # compile ahead: under TCG, compiling the imports at start-up would take seconds
    subprocess.run([str(PYTHON), "-m", "compileall", "-q", "-j0", str(root / "usr/lib/python3.11"),
                    str(root / "site")], check=False, stdout=subprocess.DEVNULL)
    image = work / "initrd.cpio.gz"
    listing = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=listing,
                             capture_output=True, check=True).stdout
    image.write_bytes(gzip.compress(archive, 1))
    log(f"image: {image.stat().st_size / 2**20:.1f} MiB compressed")
    return image


class Qmp:
    def __init__(self, path: Path) -> None:
        for _ in range(500):
            with contextlib.suppress(OSError):
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(path))
                break
            time.sleep(0.02)
        else:
            raise RuntimeError("QMP socket never came up")
        self.file = self.sock.makefile("rw")
        self._read()
        self.run("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(self.file.readline())
            if "event" not in message:
                return message

    def run(self, command: str, **arguments: Any) -> Any:
        self.file.write(json.dumps({"execute": command, "arguments": arguments}) + "\n")
        self.file.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"QMP {command}: {reply['error']}")
        return reply.get("return")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()


class Port:
    """The host's end of a virtio-serial port: a unix socket QEMU listens on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.sock = socket.socket(socket.AF_UNIX)
        for _ in range(500):
            try:
                self.sock.connect(str(path))
                break
            except OSError:
                time.sleep(0.02)
        else:
            raise RuntimeError(f"{path}: QEMU's chardev socket never came up")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with contextlib.suppress(OSError), self.sock.makefile("rb") as stream:
            for raw in stream:
                self.lines.put((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class Vm:
    """One QEMU process: its serial lines, its QMP, its two virtio-serial ports (readiness
    from the guest, commands to it), killed by PID when done."""

    def __init__(self, name: str, kernel: suites.Kernel, image: Path, work: Path, *, guid: str = "auto",
                 incoming: Path | None = None, append: str = "") -> None:
        self.name = name
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        #: The lines that carry the guest's CLOCK_MONOTONIC (restore to ready), as they came.
        self.clock_lines: list[tuple[float, str]] = []
        self.log = (work / f"{name}.serial").open("w")
        qmp = work / f"{name}.qmp"
        qmp.unlink(missing_ok=True)
        sockets = {port: work / f"{name}.{port.rsplit('.', 1)[1]}.sock" for port in (READY_PORT, CONTROL_PORT)}
        for path in sockets.values():
            path.unlink(missing_ok=True)
        command = [
            "qemu-system-x86_64", "-no-user-config", "-nodefaults", "-display", "none", "-no-reboot",
            "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512",
            "-kernel", str(kernel.vmlinuz), "-initrd", str(image),
            "-append", f"console=ttyS0 quiet panic=-1 {append}".strip(),
            "-serial", "stdio", "-device", f"vmgenid,guid={guid}",
            "-qmp", f"unix:{qmp},server=on,wait=off",
            "-device", "virtio-serial-pci,id=vser",
        ]
        for index, (port, path) in enumerate(sockets.items()):
            command += ["-chardev", f"socket,id=port{index},path={path},server=on,wait=off",
                        "-device", f"virtserialport,bus=vser.0,nr={index + 1},chardev=port{index},name={port}"]
        if incoming is not None:
            command += ["-incoming", f"exec:cat {incoming}"]
        (work / f"{name}.cmdline").write_text(" ".join(command) + "\n")
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=self._read_serial, daemon=True).start()
        self.qmp = Qmp(qmp)
        self.ready = Port(sockets[READY_PORT])
        self.control = Port(sockets[CONTROL_PORT])

    def _read_serial(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:  # whole lines only: a half-written line is never parsed
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.log.write(line + "\n")
            self.log.flush()
            stamp = time.monotonic()
            if CLOCK_LINE.match(line):
                self.clock_lines.append((stamp, line))
            self.lines.put((stamp, line))

    def wait_for(self, pattern: str, timeout: float) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no line matching {pattern!r} within {timeout} s")
            try:
                stamp, line = self.lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name}: QEMU exited before {pattern!r}; see {self.log.name}") from None
                continue
            if re.search(pattern, line):
                return stamp, line

    def wait_ready(self, generation: int, timeout: float) -> tuple[float, dict[str, Any]]:
        """The guest's readiness line for ``generation``, from the ready port (no shell)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no readiness for generation {generation} within {timeout} s")
            try:
                stamp, line = self.ready.lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            record: dict[str, Any] = json.loads(line)
            if record.get("generation") == generation and record.get("ready"):
                return stamp, record

    def command(self, line: str, answer: str, timeout: float) -> dict[str, Any]:
        """Send a command on the control port; the JSON of the serial line ``<answer> {...}``."""
        self.control.send(line)
        _, reply = self.wait_for(rf"^{answer} ", timeout)
        return report_of(reply)

    def snapshot(self, path: Path) -> None:
        self.qmp.run("stop")
        self.qmp.run("migrate-set-parameters", **{"max-bandwidth": 2**40})
        self.qmp.run("migrate", uri=f"exec:cat > {path}")
        while (self.qmp.run("query-migrate") or {}).get("status") != "completed":
            time.sleep(0.05)

    def resume(self) -> float:
        """For a restored clone: wait until the state is loaded, then ``cont``; returns the time."""
        while self.qmp.run("query-status")["status"] in ("inmigrate", "prelaunch"):
            time.sleep(0.05)
        started = time.monotonic()
        self.qmp.run("cont")
        return started

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.qmp.run("quit")
        self.qmp.close()
        self.ready.close()
        self.control.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@contextlib.contextmanager
def vm(*args: Any, **kwargs: Any) -> Iterator[Vm]:
    machine = Vm(*args, **kwargs)
    try:
        yield machine
    finally:
        machine.stop()


def report_of(line: str) -> dict[str, Any]:
    return json.loads(line.split(" ", 1)[1])  # type: ignore[no-any-return]


def restore(name: str, kernel: suites.Kernel, image: Path, work: Path, snapshot: Path, *, guid: str = "auto",
            snapshot_after: Path | None = None, expect_report: bool = True, generation: int | None = None,
            then: str | None = None, warm_change: bool = False) -> dict[str, Any]:
    """Restore a clone and read its REPORT (of ``generation``, if given); ``then``, a command for
    its control port afterwards, whose answer goes in ``result["then"]``."""
    with vm(name, kernel, image, work, guid=guid, incoming=snapshot) as clone:
        started = clone.resume()
        if not expect_report:
            _, alive = clone.wait_for(r"^ALIVE ", 60)
            time.sleep(3)  # time enough for a change to show, had there been one
            lines = []
            while not clone.lines.empty():
                lines.append(clone.lines.get()[1])
            generations = {int(line.split()[1]) for line in [alive, *lines] if line.startswith("ALIVE")}
            reports = [line for line in lines if line.startswith("REPORT")]
            return {"name": name, "alive": alive, "reports": reports, "generations": sorted(generations)}
        pattern = r"^REPORT " if generation is None else rf'^REPORT \{{"generation": {generation},'
        stamp, line = clone.wait_for(pattern, 120)
        result = report_of(line)
        result["name"] = name
        result["cont_to_report_ms"] = round((stamp - started) * 1000, 1)
        ready_stamp, ready = clone.wait_ready(result["generation"], 60)
        result["ready_record"] = ready
        result["cont_to_ready_ms"] = round((ready_stamp - started) * 1000, 1)
        result["restore_to_ready"] = restore_to_ready(clone, started, result["generation"], ready)
        if warm_change:
            result["warm_change"] = warm_change_figures(clone)
        if snapshot_after is not None:
            clone.snapshot(snapshot_after)
        if then is not None:
            result["then"] = clone.command(then, "PREPARED" if then.startswith("prepare") else "RESUMED", 120)
        return result


def restore_to_ready(clone: Vm, cont: float, generation: int, ready: dict[str, Any]) -> dict[str, Any]:
    """From ``cont`` (the host's clock) to (a) the C watcher's ack, (b) the library restore
    watcher's ack, (c) the readiness line, each stamped by the guest's CLOCK_MONOTONIC.

    The guest's clock stands still while the VM is stopped, so ``cont`` is placed on it from
    the host: the smallest (host arrival - guest stamp) over the clone's stamped lines is the
    offset between the clocks plus the shortest delivery delay, so every figure is late by
    that delay at most, the same for the three."""
    deadline = time.monotonic() + 30
    while sum(line.startswith("CLOCK") for stamp, line in clone.clock_lines if stamp > cont) < 20:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{clone.name}: the C watcher's clock lines did not come")
        time.sleep(0.1)
    lines = [(stamp, line) for stamp, line in clone.clock_lines if stamp > cont]
    offset = min(stamp - int(line.rsplit(" ", 1)[1]) / 1e9 for stamp, line in lines)
    cont_on_guest = cont - offset

    def since_cont(ns: int) -> float:
        return round((ns / 1e9 - cont_on_guest) * 1000, 2)

    def ack(kind: str) -> float:
        stamps = [int(line.split()[2]) for _, line in lines if line.startswith(f"{kind} {generation} ")]
        if not stamps:
            raise RuntimeError(f"{clone.name}: no whole {kind} line for generation {generation}; see {clone.log.name}")
        return since_cont(stamps[0])

    floor, python, library = ack("C-ACK"), ack("PY-ACK"), ack("LIB-ACK")
    return {"c_watcher_ack_ms": floor, "python_callback_ack_ms": python, "library_ack_ms": library,
            "ready_ms": since_cont(ready["monotonic_ns"]), "library_over_floor": round(library / floor, 2),
            "library_over_python": round(library / python, 2)}


def warm_change_figures(clone: Vm) -> dict[str, Any]:
    """A second change in the same clone, made from inside (``trigger-timed``), once the emulator
    has run every watcher's code: from the trigger to each ack, all on the guest's clock."""
    clone.control.send("trigger-timed")
    _, line = clone.wait_for(r"^TRIGGERED-TIMED ", 60)
    generation, triggered = (int(field) for field in line.split()[1:])
    kinds = ("C-ACK", "PY-ACK", "LIB-ACK")
    deadline = time.monotonic() + 30
    while True:
        stamps = {kind: [int(line.split()[2]) for _, line in list(clone.clock_lines)
                         if line.startswith(f"{kind} {generation} ")] for kind in kinds}
        if all(stamps.values()):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{clone.name}: acks of the warm change missing: {stamps}")
        time.sleep(0.1)
    floor, python, library = (round((stamps[kind][0] - triggered) / 1e6, 2) for kind in kinds)
    return {"generation": generation, "c_watcher_ack_ms": floor, "python_callback_ack_ms": python,
            "library_ack_ms": library, "library_over_floor": round(library / floor, 2)}


def boot_and_snapshot(name: str, kernel: suites.Kernel, image: Path, work: Path, append: str = "", *,
                      lifecycle: dict[str, Any] | None = None) -> tuple[Path, str]:
    """Boot, snapshot. With ``lifecycle`` (a dict to fill): ``prepare`` before the snapshot,
    then the original VM goes on and ``resume`` runs; what the guest said goes in the dict."""
    snapshot = work / f"{name}.snapshot"
    with vm(name, kernel, image, work, append=append) as source:
        _, backend = source.wait_for(r"CLONE-INIT: backend", 120)
        if not backend.endswith("vmgenid"):
            sys.exit(f"[clones] the module is not following the VM generation: {backend}")
        source.wait_for(r"^READY$", 300)
        source.wait_for(r"^ALIVE 0$", 60)
        source.wait_ready(0, 120)  # every watcher registered and caught up (from the host)
        guid = source.qmp.run("query-vm-generation-id")["guid"]
        if lifecycle is not None:
            lifecycle["prepare"] = source.command("prepare", "PREPARED", 120)
        source.snapshot(snapshot)
        if lifecycle is not None:
            source.qmp.run("cont")  # no restore follows here: the original VM goes on
            lifecycle["resume"] = source.command("resume", "RESUMED", 120)
    log(f"{name}: snapshot {snapshot.stat().st_size / 2**20:.0f} MiB, GUID {guid}")
    return snapshot, guid


# The guest's slow worker fails its restore hook once per restore and retries after this long.
SLOW_WORKER_RETRY_S = 6.0


def service_state(reply: dict[str, Any]) -> dict[str, Any]:
    """The clone service's own line in a prepare or resume answer."""
    (mine,) = [p for p in reply["processes"] if p["service"] == "clone-service"]
    return mine  # type: ignore[no-any-return]


def one_pass_at_a_time(kernel: suites.Kernel, image: Path, work: Path, snapshot: Path, check: Any) -> dict[str, Any]:
    """A clone snapshotted between a failed prepare and its retry, then in the middle of a slow
    restore pass; clones of both snapshots. What each saw, for results.json."""
    failed_prepare, mid_pass = work / "failed-prepare.snapshot", work / "mid-pass.snapshot"
    with vm("midpass", kernel, image, work, incoming=snapshot) as clone:
        clone.resume()
        clone.wait_for(r'^REPORT \{"generation": 1,', 120)
        failed = clone.command("prepare-failing", "PREPARED", 120)
        clone.snapshot(failed_prepare)
        clone.qmp.run("cont")  # the original goes on, and retries
        retried = clone.command("prepare", "PREPARED", 120)
        resumed = clone.command("resume", "RESUMED", 120)
        clone.control.send("trigger-slow")
        _, slow = clone.wait_for(r"^SLOW-PASS ", 120)
        clone.snapshot(mid_pass)  # the pass for this generation is under way, its seed drawn
    _, slow_generation, stale_seed = slow.split()
    check(failed["rc"] == 8 and service_state(failed)["state"] == "failed",
          f"a failed prepare: exit {failed['rc']}, {service_state(failed)} (must be failed, never prepared)")
    check(retried["rc"] == 0 and service_state(retried)["state"] == "prepared"
          and service_state(retried)["note"] is None and retried["flush_attempts"] == failed["flush_attempts"] + 1,
          f"the retry of a failed prepare must run the hooks again: {retried}")
    check(resumed["rc"] == 0, f"resume after the retried prepare: {resumed}")

    after_failure = restore("failed-prepare-clone", kernel, image, work, failed_prepare, generation=2,
                            then="prepare")
    again = after_failure["then"]
    check(again["rc"] == 0 and service_state(again)["note"] is None
          and again["flush_attempts"] == failed["flush_attempts"] + 1,
          f"a clone taken between a failed prepare and its retry: its prepare must run the hooks again: {again}")

    newest = int(slow_generation) + 1
    grandchildren = [restore(f"mid-pass-{i}", kernel, image, work, mid_pass, generation=newest) for i in (1, 2)]
    seeds = [run["slow_state"]["seed"] for run in grandchildren]
    for run in grandchildren:
        check(run["slow_state"]["generation"] == newest and run["slow_state"]["seed"] != stale_seed,
              f"{run['name']}: the state is {run['slow_state']}, not generation {newest}'s own "
              f"(the stale pass drew {stale_seed} before the snapshot)")
        check(run["hook_runs"] == 1, f"{run['name']}: the hooks ran {run['hook_runs']} times for {newest}")
    check(len(set(seeds)) == 2, f"the clones of a snapshot taken mid-pass share their state: {seeds}")
    return {"failed_prepare": failed, "retried_prepare": retried, "clone_after_failed_prepare": after_failure,
            "slow_pass": {"generation": int(slow_generation), "stale_seed": stale_seed},
            "mid_pass_clones": grandchildren}


def check_restore(run: dict[str, Any], check: Any, *, v4: bool) -> None:
    """The orchestrator named the slow worker, with its hook and error; all caught up later;
    and the host read the clone's readiness for the new generation over virtio-serial."""
    name = run["name"]
    slow = [w for w in run["named_late"] if w["service"] == "slow-worker"]
    check(run["orchestrator"] == "timed-out" and len(slow) == 1
          and slow[0]["failing_hook"] == "slow-worker-rebuild" and "not reachable" in (slow[0]["error"] or ""),
          f"{name}: the orchestrator did not name the slow worker: {run['orchestrator']}, {run['named_late']}")
    check((run["anonymous_late"] is not None) == v4 and (run["late_watchers"] is not None) == v4,
          f"{name}: late count {run['late_watchers']}, anonymous {run['anonymous_late']} (v4: {v4})")
    check(run["caught_up_after"] == "caught-up", f"{name}: watchers never caught up: {run['caught_up_after']}")
    ready = run["ready_record"]
    check(ready["ready"] and ready["watchers"] == 3 and not ready["late"], f"{name}: readiness {ready}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clones", type=int, default=2)
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--kernel", default=suites.HOST, choices=[suites.HOST, *suites.SUITES],
                        help="the host's generic kernel (default) or that Debian suite's")
    args = parser.parse_args()
    started = time.monotonic()
    if not args.no_install:
        ensure_packages(PACKAGES + (HOST_KERNEL_PACKAGES if args.kernel == suites.HOST else []))
    kernel = generic_kernel(args.kernel)
    log(f"kernel {kernel.release} ({args.kernel})")
    work = PROJECT / "build" / ("clones" if args.kernel == suites.HOST else f"clones-{args.kernel}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    image = build_image(kernel, build_module(kernel, work), work)

    failures: list[str] = []

    def check(condition: bool, message: str) -> None:
        if not condition:
            failures.append(message)
            log(f"FAIL: {message}")

    lifecycle: dict[str, Any] = {}
    snapshot, guid = boot_and_snapshot("source", kernel, image, work, lifecycle=lifecycle)
    prepared, resumed = lifecycle["prepare"], lifecycle["resume"]
    services = sorted(p["service"] for p in prepared["processes"])
    check(prepared["rc"] == 0 and services == ["clone-service", "slow-worker", "worker-a"]
          and all(p["ok"] for p in prepared["processes"]),
          f"prepare: exit {prepared['rc']}, processes {prepared['processes']}, stderr {prepared['stderr']!r}")
    check(prepared["before_runs"] == 1 and not prepared["pool_open"],
          f"prepare: before-snapshot hooks ran {prepared['before_runs']} times, pool open {prepared['pool_open']}")
    check(resumed["rc"] == 0 and resumed["resume_runs"] == 1 and resumed["pool_open"]
          and resumed["before_runs"] == 1 and resumed["restores"] == 0,
          f"resume of the original VM: {resumed}")
    clones = [
        restore(f"clone-{i}", kernel, image, work, snapshot,
                snapshot_after=work / "clone-1.snapshot" if i == 1 else None, warm_change=i == 2)
        for i in range(1, args.clones + 1)
    ]
    for clone in clones:
        name = clone["name"]
        check(clone["generation"] == 1, f"{name}: generation {clone['generation']}, expected 1")
        check(clone["hook_runs"] == 1, f"{name}: the hooks ran {clone['hook_runs']} times")
        check_restore(clone, check, v4=True)
        check(clone["before_runs"] == 1 and clone["resume_runs"] == 0 and clone["pool_open"]
              and clone["pool_reopened_by_restore"],
              f"{name}: the snapshot's closed pool: before-snapshot runs {clone['before_runs']}, resume runs "
              f"{clone['resume_runs']}, open {clone['pool_open']}, reopened by the restore hook "
              f"{clone['pool_reopened_by_restore']}")
        check(clone["watch_saw"] and clone["acknowledged"], f"{name}: watch() or the restore watcher missed it")
        check(clone["racing_prefix"] is not None and clone["racing_prefix"] == clone["prefix"],
              f"{name}: the request at resume got {clone['racing_prefix']}, the value is {clone['prefix']}")
        check(clone["identity_attempts"] == 2 and clone["secret_follows_identity"],
              f"{name}: after a failed IDENTITIES hook, the retry left the SECRETS phase on the old identity "
              f"({clone['identity_attempts']} attempts)")
    check(len({c["random"] for c in clones}) == len(clones), "random outputs are identical across clones")
    check(len({c["openssl"] for c in clones}) == len(clones), "OpenSSL's generator is identical across clones")
    check(len({c["secret"] for c in clones}) == len(clones), "generation-bound secrets are identical across clones")
    check(len({c["racing_prefix"] for c in clones}) == len(clones),
          "a request racing the hooks at resume got the same bound value in every clone")

    passes = one_pass_at_a_time(kernel, image, work, snapshot, check)

    grandchild = restore("clone-1-1", kernel, image, work, work / "clone-1.snapshot")
    check(grandchild["generation"] == 2, f"clone of a clone: generation {grandchild['generation']}, expected 2")

    same = restore("same-guid", kernel, image, work, snapshot, guid=guid, expect_report=False)
    check(not same["reports"] and same["generations"] == [0], f"same GUID: {same['reports'] or same['generations']}")

    control_snapshot, _ = boot_and_snapshot("noreseed", kernel, image, work, append="noreseed")
    controls = [restore(f"noreseed-{i}", kernel, image, work, control_snapshot) for i in (1, 2)]
    check(len({c["random"] for c in controls}) == 1, "without the reseed hook, random should be identical")
    check(len({c["openssl"] for c in controls}) == 1,
          "without reseed_openssl, OpenSSL's RAND_bytes should be identical (OpenSSL notices a fork, not a clone)")
    check(len({c["racing_prefix"] for c in controls}) == 1,
          "without the reseed hook, the racing request's prefix should be identical (the check can fail)")
    check(len({c["secret"] for c in controls}) == 2, "the generation-bound secret must differ even so")

    # The backend in the other personality: the shipped v8 ABI (no count of late watchers).
    v8_snapshot, _ = boot_and_snapshot("v8", kernel, image, work, append="sgabi=8")
    v8 = restore("v8-clone", kernel, image, work, v8_snapshot)
    check(v8["generation"] == 1 and v8["hook_runs"] == 1, f"v8: generation {v8['generation']}, hooks {v8['hook_runs']}")
    check_restore(v8, check, v4=False)
    for run in (grandchild, *controls):
        check_restore(run, check, v4=True)

    timed = [run for run in [*clones, grandchild, *controls, v8] if "restore_to_ready" in run]
    for run in timed:
        figures = run["restore_to_ready"]
        check(figures["c_watcher_ack_ms"] > 0 and figures["python_callback_ack_ms"] > 0
              and 0 < figures["library_ack_ms"] < figures["ready_ms"],
              f"{run['name']}: restore to ready figures out of order: {figures}")
    restore_to_ready_summary = {
        key: sorted(run["restore_to_ready"][key] for run in timed)
        for key in ("c_watcher_ack_ms", "python_callback_ack_ms", "library_ack_ms", "ready_ms",
                    "library_over_floor", "library_over_python")
    }
    latencies = sorted(c["cont_to_report_ms"] for c in [*clones, grandchild, *controls, v8])
    ready_latencies = sorted(c["cont_to_ready_ms"] for c in [*clones, grandchild, *controls, v8])
    results = {"kernel": kernel.release, "lifecycle": lifecycle, "clones": clones, "clone_of_clone": grandchild,
               "same_guid": same, "noreseed": controls, "v8": v8, "one_pass_at_a_time": passes,
               "cont_to_report_ms": latencies,
               "cont_to_ready_ms": ready_latencies, "restore_to_ready": restore_to_ready_summary,
               "warm_change": clones[-1].get("warm_change"),
               "failures": failures,
               "seconds": round(time.monotonic() - started, 1)}
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for leftover in work.glob("*.snapshot"):  # about 200 MiB each
        leftover.unlink()

    header = f"{'run':<12} {'gen':>4} {'hooks':>5} {'named late':<24} {'random':>11} {'secret':<17}"
    print(f"\n{header} {'racing prefix':>20} {'cont->report':>12} {'cont->ready':>12}")
    for row in [*clones, grandchild, *controls, v8]:
        named = ",".join(w["service"] for w in row["named_late"]) or "-"
        print(f"{row['name']:<12} {row['generation']:>4} {row['hook_runs']:>5} {named[:24]:<24} "
              f"{row['random']:>11} {row['secret']:<17} {row['racing_prefix']!s:>20} "
              f"{row['cont_to_report_ms']:>9.1f} ms {row['cont_to_ready_ms']:>9.1f} ms")
    print(f"lifecycle: prepare exit {prepared['rc']} ({len(prepared['processes'])} processes confirmed), "
          f"pool closed; resume exit {resumed['rc']}, pool reopened")
    print(f"same-guid    no change: generations seen {same['generations']}, reports {len(same['reports'])}")
    stale = passes["slow_pass"]
    ended = ", ".join(f"{r['slow_state']['generation']}/{r['slow_state']['seed']}" for r in passes["mid_pass_clones"])
    print(f"mid-pass     snapshotted during the pass for generation {stale['generation']} "
          f"(seed {stale['stale_seed']}); its clones ended with {ended}")
    print(f"prepare      failed (exit {passes['failed_prepare']['rc']}), retried: exit "
          f"{passes['retried_prepare']['rc']} in the original, {passes['clone_after_failed_prepare']['then']['rc']} "
          "in its clone; the hooks ran again in both")
    print(f"latency from cont to every hook and watcher done: min {latencies[0]} ms, max {latencies[-1]} ms "
          "(host clock, TCG)")
    print(f"restore -> ready, read by the host on the virtio-serial port: min {ready_latencies[0]} ms, "
          f"max {ready_latencies[-1]} ms (includes the slow worker's {SLOW_WORKER_RETRY_S} s retry)")
    print("\nrestore to ready, from cont, on the guest's CLOCK_MONOTONIC (TCG): (a) the C watcher's ack, "
          "(b) the library's restore watcher's ack (a no-op hook), (c) the readiness line; and a bare "
          "asyncio callback's ack (the Python floor)")
    print(f"{'run':<12} {'(a) C ack':>11} {'bare Python':>12} {'(b) library':>12} {'(b)/(a)':>8} "
          f"{'(b)/Python':>10} {'(c) ready':>11}")
    for run in timed:
        figures = run["restore_to_ready"]
        print(f"{run['name']:<12} {figures['c_watcher_ack_ms']:>8.2f} ms {figures['python_callback_ack_ms']:>9.2f} ms "
              f"{figures['library_ack_ms']:>9.2f} ms {figures['library_over_floor']:>8.2f} "
              f"{figures['library_over_python']:>10.2f} {figures['ready_ms']:>8.1f} ms")
    for key, name in (("library_over_floor", "(b)/(a)"), ("library_over_python", "(b)/bare Python")):
        ratios = restore_to_ready_summary[key]
        print(f"{name}: median {ratios[len(ratios) // 2]:.2f}, range {ratios[0]:.2f}-{ratios[-1]:.2f}")
    print(f"(target (b)/(a) <= 1.5; (c) includes the slow worker's {SLOW_WORKER_RETRY_S} s retry)")
    warm = clones[-1].get("warm_change")
    if warm is not None:
        print(f"a second change in {clones[-1]['name']}, from the trigger (the code has run once): C ack "
              f"{warm['c_watcher_ack_ms']} ms, bare Python {warm['python_callback_ack_ms']} ms, library "
              f"{warm['library_ack_ms']} ms ((b)/(a) {warm['library_over_floor']})")
    log(f"{'FAILED: ' + '; '.join(failures) if failures else 'clones diverged as they must'} "
        f"({results['seconds']} s); results in {work / 'results.json'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
