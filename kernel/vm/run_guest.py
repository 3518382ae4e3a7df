#!/usr/bin/env python3
"""Run the device test suite inside a QEMU guest, against a real /dev/sysgenid.

One command does the whole job (``nox -s kernel`` calls it):

1. install the Debian packages it needs when they are missing;
2. build the sysgenid module (warnings are errors) and a stage-1 initramfs;
3. boot Debian's cloud kernel under QEMU (TCG), the host root shared read-only over
   virtiofs and a fresh report directory shared writable;
4. in the guest, one pytest process runs the device tests against the module, loading
   it once per ABI;
5. bring back the JUnit report and the exit status; fail on a boot failure, a timeout,
   or a kernel warning or oops in the guest's log.

``--kernel trixie`` or ``--kernel sid`` boots that Debian suite's cloud kernel instead of
the host's, with the module built in that suite's root (its compiler and headers; see
kernel/vm/suites.py). ``--root sid`` runs the tests with a Python of the sid root (the
guest enters that root with pivot_root), for example
``--root sid --python /opt/venvs/3.15/bin/python``.

QEMU and virtiofsd run under our control and are killed by PID, whatever happens.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # suites.py, beside this script
import suites

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
WORK = PROJECT / "build" / "guest"  # the initramfs, and the report directories unless --out says
MODULE_SOURCE = HERE.parent
APT_PACKAGES = [
    "qemu-system-x86",
    "linux-image-cloud-amd64",
    "linux-headers-cloud-amd64",
    "klibc-utils",
    "cpio",
    "kmod",
    "util-linux",
    "iproute2",
    "gcc-multilib",  # the 32-bit test program, built in the guest
]
VIRTIOFSD_CANDIDATES = ["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"]
# What the guest's kernel log must never show. Case-sensitive, whole words: the kernel
# spells these one way, and TCG's boot line "... failed to get a good estimate for
# loops_per_jiffy" must not pass for an oops.
KERNEL_TROUBLE = re.compile(
    r"(\bOops\b|\bBUG:|\bWARNING:|\bgeneral protection fault\b|\bCall Trace:|\bKernel panic\b|"
    r"\bUBSAN:|\bKASAN:|\brefcount_t:|\blist_(add|del) corruption\b)"
)
# Written first into every report directory: the mark that a later run may replace it.
REPORT_MARK = ".sysgenid-guest-report"


def log(message: str) -> None:
    print(f"[guest] {message}", flush=True)


def ensure_packages() -> None:
    missing = []
    for package in APT_PACKAGES:
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
        )
        if "install ok installed" not in status.stdout:
            missing.append(package)
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"[guest] missing packages {' '.join(missing)}; install them as root")
    log(f"installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True, env=env
    )


def build_module(source: Path, kernel: suites.Kernel, build_dir: Path, make_args: list[str]) -> Path:
    """Build a module from a directory with a Kbuild file; warnings fail the build."""
    try:
        built = suites.build_module(kernel, source, build_dir, make_args)
    except suites.SuiteError as exc:
        print(exc, file=sys.stderr)
        sys.exit(f"[guest] module build for {kernel.release} failed")
    log(f"built {built.name} for {kernel.release} with W=1 {' '.join(make_args)}: no warnings")
    return built


def resolve_module(spec: str | None, kernel: suites.Kernel, work: Path, make_args: list[str]) -> Path:
    if spec is None:
        return build_module(MODULE_SOURCE, kernel, work / "module", make_args)
    path = Path(spec).resolve()
    if path.is_file() and path.suffix == ".ko":
        return path
    if path.is_dir() and ((path / "Kbuild").exists() or (path / "Makefile").exists()):
        return build_module(path, kernel, work / "module", make_args)
    sys.exit(f"[guest] --module {spec}: not a .ko file or a source directory with a Kbuild file")


def guest_job(args: argparse.Namespace, module: Path, out: Path, root: Path | None = None) -> str:
    """The script the guest runs, as root, from the project directory.

    With ``root`` (a suite's root, on the read-only host share), it runs in that root,
    the project at /project and the report directory at /report.
    """
    if root is not None:
        module = Path(suites.REPORT_MOUNT) / module.relative_to(out)
        report = Path(suites.REPORT_MOUNT)
    else:
        report = out
    if args.script:  # another program than the test suite (the benchmarks), told where things are
        command = [str(args.script), f"--kernel-module={module}", f"--out={report}", *args.pytest_args]
    else:
        command = _pytest_command(args, module, report)
    environment = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "SYSGENID_REPORT_DIR": str(report)}
    if root is None:
        setup = [f"cd {shlex.quote(str(PROJECT))}", f"export {shlex.join(f'{k}={v}' for k, v in environment.items())}"]
        run = shlex.join([args.python, *command])
    else:
        setup = []
        run = shlex.join(suites.enter_root_command(
            root, PROJECT, out, suites.PROJECT_MOUNT,
            ["/usr/bin/env", *(f"{k}={v}" for k, v in environment.items()), args.python, *command]))
    return "\n".join([
        "set -u",
        *setup,
        "echo 7 > /proc/sys/kernel/printk",
        run,
        "rc=$?",
        f"dmesg > {shlex.quote(str(out / 'dmesg.txt'))}",
        "exit $rc",
        "",
    ])


def _pytest_command(args: argparse.Namespace, module: Path, out: Path) -> list[str]:
    return [
        "-m", "pytest", "-p", "no:cacheprovider", "-m", "device",
        "--device-backends=kernel",
        f"--kernel-module={module}",
        f"--kernel-abis={args.abi}",
        *([f"--kernel-flavours={args.flavours}"] if args.flavours else []),
        *([f"--kernel-driver={args.driver}"] if args.driver else []),
        f"--junitxml={out / 'junit.xml'}",
        "-o", "junit_suite_name=kernel-device",
        *(["--kernel-no-abi-param"] if args.no_abi_param else []),
        *args.pytest_args,
    ]


class Guest:
    """QEMU and virtiofsd processes that this run started, and only those."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start_virtiofsd(self, binary: str, tag: str, source: Path, run_dir: Path, cache: str) -> Path:
        socket = run_dir / f"{tag}.sock"
        log_file = open(run_dir / f"virtiofsd-{tag}.log", "wb")  # noqa: SIM115 - lives with the process
        process = subprocess.Popen(
            [binary, f"--socket-path={socket}", "-o", f"source={source}", "-o", f"cache={cache}",
             # the default namespace sandbox fails here with "pivot_root ... EBUSY"
             "-o", "sandbox=chroot", "-o", "log_level=warn"],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.processes.append(process)
        for _ in range(500):
            if socket.exists():
                return socket
            if process.poll() is not None:
                break
            time.sleep(0.02)
        sys.exit(f"[guest] virtiofsd for {tag} did not start: {(run_dir / f'virtiofsd-{tag}.log').read_text()}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def boot(args: argparse.Namespace, kernel: suites.Kernel, initrd: Path, out: Path, run_dir: Path) -> tuple[int, float]:
    virtiofsd = next((c for c in VIRTIOFSD_CANDIDATES if os.access(c, os.X_OK)), shutil.which("virtiofsd"))
    if virtiofsd is None:
        sys.exit("[guest] no virtiofsd (package qemu-system-common)")
    guest = Guest()
    console_path = out / "console.log"
    try:
        root_socket = guest.start_virtiofsd(virtiofsd, "hostroot", Path("/"), run_dir, "always")
        out_socket = guest.start_virtiofsd(virtiofsd, "hostout", out, run_dir, "auto")
        keep = [str(p) for p in {PROJECT, Path(args.python).resolve().parent} if str(p).startswith("/tmp/")]
        append = (
            f"console=ttyS0 panic=-1 loglevel=4 vmrun={HERE / 'stage2.sh'} vmroot=hostroot vmout={out}"
            + (f" vmkeep={','.join(keep)}" if keep else "")
        )
        qemu = [
            "qemu-system-x86_64", "-no-user-config", "-nodefaults", "-display", "none", "-no-reboot",
            "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", str(args.smp), "-m", f"{args.memory}",
            "-object", f"memory-backend-memfd,id=mem,size={args.memory}M,share=on", "-numa", "node,memdev=mem",
            "-serial", "stdio", "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
            "-chardev", f"socket,id=croot,path={root_socket}",
            "-device", "vhost-user-fs-pci,chardev=croot,tag=hostroot",
            "-chardev", f"socket,id=cout,path={out_socket}",
            "-device", "vhost-user-fs-pci,chardev=cout,tag=hostout",
            "-append", append,
        ]
        (run_dir / "qemu-cmdline.txt").write_text(shlex.join(qemu) + "\n")
        started = time.monotonic()
        with open(console_path, "wb") as console:
            process = subprocess.Popen(
                qemu, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            guest.processes.append(process)
            assert process.stdout is not None
            deadline = started + args.timeout
            os.set_blocking(process.stdout.fileno(), False)
            timed_out = False
            while True:
                chunk = process.stdout.read()
                if chunk:
                    console.write(chunk)
                    console.flush()
                    if args.verbose:
                        sys.stdout.buffer.write(chunk)
                        sys.stdout.flush()
                if process.poll() is not None:
                    rest = process.stdout.read()
                    if rest:
                        console.write(rest)
                        if args.verbose:
                            sys.stdout.buffer.write(rest)
                    break
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(0.05)
        elapsed = time.monotonic() - started
        if timed_out:
            log(f"TIMEOUT after {args.timeout} s; the guest's console is in {console_path}")
            return 124, elapsed
        return process.returncode or 0, elapsed
    finally:
        guest.stop()


def build_initramfs(kernel: suites.Kernel, initrd: Path) -> None:
    subprocess.run([str(HERE / "mkinitramfs.sh"), kernel.release, str(initrd), str(kernel.modules_base)], check=True)


def write_summary(out: Path, args: argparse.Namespace, kernel: suites.Kernel, status: int) -> None:
    """summary.json: what ran where, for the table of tested kernels (kernel/vm/matrix.py,
    which takes the counts from junit.xml beside it)."""
    environment_path = out / "environment.json"
    environment = json.loads(environment_path.read_text()) if environment_path.exists() else {}
    summary = {
        "kernel": kernel.release,
        "kernel_suite": kernel.suite,
        "python": environment.get("python"),
        "userland": environment.get("userland"),
        "module": args.module or "kernel/ (W=1, no warnings)",
        "make_args": args.make_arg,
        "abis": args.abi,
        "flavours": args.flavours,
        "selection": [a for a in args.pytest_args if a.startswith("tests/")] or "every device test",
        "status": status,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def prepare_report_directory(path: Path) -> Path:
    """A fresh, empty report directory at ``path``; an earlier report there is replaced.

    Anything else that is not empty is left alone: --out might name a directory of the user's.
    """
    out = path.resolve()
    if out.exists():
        if any(out.iterdir()) and not (out / REPORT_MARK).exists():
            sys.exit(f"[guest] --out {out}: not empty and not an earlier report directory; not touching it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / REPORT_MARK).write_text("a report directory of kernel/vm/run_guest.py; replaced by the next run\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module", help="a built .ko, or a source directory with a Kbuild file (default: kernel/)")
    parser.add_argument("--abi", default="v4,v8",
                        help="ABIs to test, comma-separated (default v4,v8); for a driver with one ABI, name it")
    parser.add_argument("--no-abi-param", action="store_true", help="the module has no abi= load parameter")
    parser.add_argument("--flavours", default="",
                        help="also test our module in these flavours, comma-separated (amazon-linux, v4-patch)")
    parser.add_argument("--driver", choices=["amazon-linux", "v4-patch", "unknown"],
                        help="--module is not ours: the shipped driver it is (its known quirks are expected)")
    parser.add_argument("--make-arg", action="append", default=[], metavar="VAR=VALUE",
                        help="passed to make when building from source, e.g. FIXED_ABI=8")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter to run pytest with in the guest (with --root: its path in that root)")
    parser.add_argument("--kernel", default=suites.HOST, choices=[suites.HOST, *suites.SUITES],
                        help="boot the host's cloud kernel (default) or that Debian suite's")
    parser.add_argument("--root", choices=suites.SUITES,
                        help="run the tests inside that suite's root (its Python: see --python)")
    parser.add_argument("--out", type=Path, help="report directory (default: a fresh one under build/guest)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before the guest is killed")
    parser.add_argument("--memory", type=int, default=1024, help="guest memory in MiB")
    parser.add_argument("--smp", type=int, default=2)
    parser.add_argument("--no-install", action="store_true", help="do not install missing Debian packages")
    parser.add_argument("-v", "--verbose", action="store_true", help="echo the guest's console")
    parser.add_argument("--script", type=Path,
                        help="run this Python script instead of the test suite, with --kernel-module= and "
                             "--out= (the report directory) before the arguments after --")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest (or --script) arguments (after --)")
    args = parser.parse_args(argv)

    if args.script is not None and not args.script.is_file():
        parser.error(f"--script {args.script}: no such file")
    started = time.monotonic()
    if not args.no_install:
        ensure_packages()
    try:
        kernel = suites.suite_kernel(args.kernel, "cloud")
        root = suites.ensure_root(args.root) if args.root else None
    except suites.SuiteError as exc:
        sys.exit(f"[guest] {exc}")
    if root is not None and not os.path.lexists(root / args.python.lstrip("/")):
        sys.exit(f"[guest] --python {args.python}: not in the {args.root} root (kernel/vm/suites.py venv makes one)")
    WORK.mkdir(parents=True, exist_ok=True)  # the initramfs lives here, whatever --out says
    out = prepare_report_directory(args.out or WORK / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    run_dir = out / "run"
    run_dir.mkdir()
    module = resolve_module(args.module, kernel, out / "build", args.make_arg)
    if root is not None and not module.is_relative_to(out):
        (out / "build").mkdir(exist_ok=True)
        module = Path(shutil.copy(module, out / "build" / module.name))  # the root sees only /report
    initrd = WORK / f"initrd-{kernel.release}.cpio.gz"
    if not initrd.exists():
        build_initramfs(kernel, initrd)
    (out / "job.sh").write_text(guest_job(args, module, out, root))
    python = f"{args.root} root's {args.python}" if root else args.python
    log(f"booting {kernel.release} under QEMU (TCG), tests on {python}; reports in {out}")
    qemu_status, elapsed = boot(args, kernel, initrd, out, run_dir)

    console = (out / "console.log").read_text(errors="replace")
    dmesg_path = out / "dmesg.txt"
    kernel_log = dmesg_path.read_text(errors="replace") if dmesg_path.exists() else console
    trouble = [line for line in kernel_log.splitlines() if KERNEL_TROUBLE.search(line)]
    exit_file = out / "exit_code"
    job_status = int(exit_file.read_text().strip()) if exit_file.exists() else None

    junit = out / "junit.xml"
    figures = out / "figures.jsonl"
    if figures.exists():  # what the stress and fuzz tests counted
        for line in figures.read_text().splitlines():
            log(f"figures: {line}")
    log(f"guest part took {elapsed:.1f} s (QEMU start to exit); whole run {time.monotonic() - started:.1f} s")
    log(f"JUnit report: {junit if junit.exists() else 'missing'}")
    status = verdict(args, qemu_status, job_status, trouble, console)
    write_summary(out, args, kernel, status)
    return status


def verdict(args: argparse.Namespace, qemu_status: int, job_status: int | None, trouble: list[str],
            console: str) -> int:
    """The run's exit status, said in words too."""
    if qemu_status == 124:
        return 124
    if job_status is None:
        print(console[-4000:], file=sys.stderr)
        log("FAILED: the guest did not report an exit status (boot failure?)")
        return 99
    if trouble:
        log("FAILED: the guest's kernel log shows trouble:")
        for line in trouble:
            print(f"    {line}", file=sys.stderr)
        return 98
    what = f"{args.script}" if args.script else "the device tests"
    if job_status != 0:
        log(f"FAILED: {what} exited with {job_status}")
        return job_status
    log(f"{what} passed in the guest; kernel log clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
