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
5. Controls: the reseed hook left out (``random`` then stays identical across clones), a
   restore that keeps the GUID (no change), and a clone of a clone (a second bump); and the
   module in its v8 personality, cloned once.

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
PACKAGES = ["qemu-system-x86", "busybox-static", "cpio", "kmod",
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
# The library's dependencies and theirs, as far as Python 3.11 needs them (older anyio
# releases also need sniffio); whichever of these the environment has is copied.
SITE_PACKAGES = ["anyio", "sniffio", "idna", "typing_extensions.py"]


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


def build_image(module: Path, work: Path) -> Path:
    root = work / "rootfs"
    shutil.rmtree(root, ignore_errors=True)
    for directory in ("bin", "usr/bin", "site", "proc", "sys", "dev", "tmp", "root"):
        (root / directory).mkdir(parents=True, exist_ok=True)
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


class Vm:
    """One QEMU process: its serial lines, its QMP, killed by PID when done."""

    def __init__(self, name: str, kernel: suites.Kernel, image: Path, work: Path, *, guid: str = "auto",
                 incoming: Path | None = None, append: str = "") -> None:
        self.name = name
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.log = (work / f"{name}.serial").open("w")
        qmp = work / f"{name}.qmp"
        qmp.unlink(missing_ok=True)
        command = [
            "qemu-system-x86_64", "-no-user-config", "-nodefaults", "-display", "none", "-no-reboot",
            "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512",
            "-kernel", str(kernel.vmlinuz), "-initrd", str(image),
            "-append", f"console=ttyS0 quiet panic=-1 {append}".strip(),
            "-serial", "stdio", "-device", f"vmgenid,guid={guid}",
            "-qmp", f"unix:{qmp},server=on,wait=off",
        ]
        if incoming is not None:
            command += ["-incoming", f"exec:cat {incoming}"]
        (work / f"{name}.cmdline").write_text(" ".join(command) + "\n")
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=self._read_serial, daemon=True).start()
        self.qmp = Qmp(qmp)

    def _read_serial(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:  # whole lines only: a half-written line is never parsed
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.log.write(line + "\n")
            self.log.flush()
            self.lines.put((time.monotonic(), line))

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
            snapshot_after: Path | None = None, expect_report: bool = True) -> dict[str, Any]:
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
        stamp, line = clone.wait_for(r"^REPORT ", 120)
        result = report_of(line)
        result["name"] = name
        result["cont_to_report_ms"] = round((stamp - started) * 1000, 1)
        if snapshot_after is not None:
            clone.snapshot(snapshot_after)
        return result


def boot_and_snapshot(name: str, kernel: suites.Kernel, image: Path, work: Path, append: str = "") -> tuple[Path, str]:
    snapshot = work / f"{name}.snapshot"
    with vm(name, kernel, image, work, append=append) as source:
        _, backend = source.wait_for(r"CLONE-INIT: backend", 120)
        if not backend.endswith("vmgenid"):
            sys.exit(f"[clones] the module is not following the VM generation: {backend}")
        source.wait_for(r"^READY$", 300)
        source.wait_for(r"^ALIVE 0$", 60)
        guid = source.qmp.run("query-vm-generation-id")["guid"]
        source.snapshot(snapshot)
    log(f"{name}: snapshot {snapshot.stat().st_size / 2**20:.0f} MiB, GUID {guid}")
    return snapshot, guid


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
    image = build_image(build_module(kernel, work), work)

    failures: list[str] = []

    def check(condition: bool, message: str) -> None:
        if not condition:
            failures.append(message)
            log(f"FAIL: {message}")

    snapshot, guid = boot_and_snapshot("source", kernel, image, work)
    clones = [
        restore(f"clone-{i}", kernel, image, work, snapshot,
                snapshot_after=work / "clone-1.snapshot" if i == 1 else None)
        for i in range(1, args.clones + 1)
    ]
    for clone in clones:
        name = clone["name"]
        check(clone["generation"] == 1, f"{name}: generation {clone['generation']}, expected 1")
        check(clone["hook_runs"] == 1, f"{name}: the hooks ran {clone['hook_runs']} times")
        check(clone["orchestrator"] == "caught-up" and clone["late_watchers"] == 0,
              f"{name}: the orchestrator saw {clone['orchestrator']}, {clone['late_watchers']} late")
        check(clone["watch_saw"] and clone["acknowledged"], f"{name}: watch() or the restore watcher missed it")
        check(clone["racing_prefix"] is not None and clone["racing_prefix"] == clone["prefix"],
              f"{name}: the request at resume got {clone['racing_prefix']}, the value is {clone['prefix']}")
        check(clone["identity_attempts"] == 2 and clone["secret_follows_identity"],
              f"{name}: after a failed IDENTITIES hook, the retry left the SECRETS phase on the old identity "
              f"({clone['identity_attempts']} attempts)")
    check(len({c["random"] for c in clones}) == len(clones), "random outputs are identical across clones")
    check(len({c["secret"] for c in clones}) == len(clones), "generation-bound secrets are identical across clones")
    check(len({c["racing_prefix"] for c in clones}) == len(clones),
          "a request racing the hooks at resume got the same bound value in every clone")

    grandchild = restore("clone-1-1", kernel, image, work, work / "clone-1.snapshot")
    check(grandchild["generation"] == 2, f"clone of a clone: generation {grandchild['generation']}, expected 2")

    same = restore("same-guid", kernel, image, work, snapshot, guid=guid, expect_report=False)
    check(not same["reports"] and same["generations"] == [0], f"same GUID: {same['reports'] or same['generations']}")

    control_snapshot, _ = boot_and_snapshot("noreseed", kernel, image, work, append="noreseed")
    controls = [restore(f"noreseed-{i}", kernel, image, work, control_snapshot) for i in (1, 2)]
    check(len({c["random"] for c in controls}) == 1, "without the reseed hook, random should be identical")
    check(len({c["racing_prefix"] for c in controls}) == 1,
          "without the reseed hook, the racing request's prefix should be identical (the check can fail)")
    check(len({c["secret"] for c in controls}) == 2, "the generation-bound secret must differ even so")

    # The backend in the other personality: the shipped v8 ABI (no count of late watchers).
    v8_snapshot, _ = boot_and_snapshot("v8", kernel, image, work, append="sgabi=8")
    v8 = restore("v8-clone", kernel, image, work, v8_snapshot)
    check(v8["generation"] == 1 and v8["hook_runs"] == 1, f"v8: generation {v8['generation']}, hooks {v8['hook_runs']}")
    check(v8["orchestrator"] == "caught-up" and v8["late_watchers"] is None, f"v8: orchestrator {v8['orchestrator']}")

    latencies = sorted(c["cont_to_report_ms"] for c in [*clones, grandchild, *controls, v8])
    results = {"kernel": kernel.release, "clones": clones, "clone_of_clone": grandchild, "same_guid": same,
               "noreseed": controls, "v8": v8, "cont_to_report_ms": latencies, "failures": failures,
               "seconds": round(time.monotonic() - started, 1)}
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for leftover in work.glob("*.snapshot"):  # about 200 MiB each
        leftover.unlink()

    header = f"{'run':<12} {'gen':>4} {'hooks':>5} {'orchestrator':<12} {'random':>11} {'secret':<17}"
    print(f"\n{header} {'racing prefix':>20} {'cont->report':>12}")
    for row in [*clones, grandchild, *controls, v8]:
        print(f"{row['name']:<12} {row['generation']:>4} {row['hook_runs']:>5} {row['orchestrator']:<12} "
              f"{row['random']:>11} {row['secret']:<17} {row['racing_prefix']!s:>20} "
              f"{row['cont_to_report_ms']:>9.1f} ms")
    print(f"same-guid    no change: generations seen {same['generations']}, reports {len(same['reports'])}")
    print(f"latency from cont to every hook and watcher done: min {latencies[0]} ms, max {latencies[-1]} ms "
          "(host clock, TCG)")
    log(f"{'FAILED: ' + '; '.join(failures) if failures else 'clones diverged as they must'} "
        f"({results['seconds']} s); results in {work / 'results.json'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
