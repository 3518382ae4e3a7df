#!/usr/bin/env python3
"""Other Debian suites' kernels and Pythons, without touching the host's own packages.

The guest harness tests the module on the host's kernel (Debian 12: 6.1) and on newer
ones: ``trixie`` (Debian 13: 6.12) and ``sid`` (the newest Debian kernel). For each suite
this keeps a root under build/suites/<suite>/root, made with mmdebstrap from the mirror
the host's apt already uses. The root holds that suite's compiler and kernel headers (the
module is built there, as a user of that distribution builds it), its kernel images,
extracted with ``apt-get download`` and ``dpkg-deb -x`` (never installed), and, for sid,
its Pythons with a virtual environment each.

A root is made once and reused while the packages it was made with stay the same.
Root only. Standard library only: it runs before anything is installed.

    kernel/vm/suites.py root sid               # make (or reuse) the root, print its path
    kernel/vm/suites.py kernel trixie cloud    # extract the kernel, print release and vmlinuz
    kernel/vm/suites.py run sid -- python3.15 -V
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
SUITES_DIR = PROJECT / "build" / "suites"
HOST = "host"  # the host's own kernel and Python: nothing to fetch
# What every root has: the module's build (W=1 runs kernel-doc, which is Perl), insmod, and DKMS
# with openssl (it makes a MOK key pair and signs the modules it builds).
BUILD_PACKAGES = ["make", "gcc", "perl", "kmod", "mount", "dkms", "openssl", "linux-headers-cloud-amd64"]
# What the device tests run in the guest need from a root whose Python runs them.
GUEST_PACKAGES = ["util-linux", "iproute2", "procps", "gcc-multilib"]
SUITE_PACKAGES = {
    "trixie": BUILD_PACKAGES,
    "sid": [*BUILD_PACKAGES, "linux-headers-amd64", *GUEST_PACKAGES,
            "python3.14", "python3.14-venv", "python3.15", "python3.15-venv"],
}
SUITES = sorted(SUITE_PACKAGES)
PYTHONS = {"sid": ["3.14", "3.15"]}
KERNEL_FLAVOURS = {"cloud": "linux-image-cloud-amd64", "generic": "linux-image-amd64"}
STAMP = ".sysgenid-suite.json"
# Mount points in every root: the project, a report directory, and where the old root goes.
PROJECT_MOUNT = "/project"
REPORT_MOUNT = "/report"
OLD_ROOT = "/oldroot"
# A suite's archive may be served from a snapshot whose Release file has expired; the
# signatures are still checked.
APT_OPTIONS = ['Acquire::Check-Valid-Until "false"']
# Module packages whose files the initramfs and the clone guest need.
_KERNEL_PARTS = re.compile(r"^linux-(image|binary|modules)-")


def log(message: str) -> None:
    print(f"[suites] {message}", flush=True)


class SuiteError(RuntimeError):
    """A suite's root or kernel could not be made: the message says why."""


def check_suite(suite: str) -> None:
    if suite not in SUITE_PACKAGES:
        raise SuiteError(f"unknown suite {suite!r}: choose from {', '.join(SUITES)}")


def host_mirror(etc: Path = Path("/etc")) -> str:
    """The Debian archive the host's apt uses (the URI that serves the host's own suite)."""
    codename = ""
    for line in (etc / "os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            codename = line.split("=", 1)[1].strip().strip('"')
    candidates: list[tuple[str, list[str]]] = []
    sources = etc / "apt" / "sources.list.d"
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                (key.strip().lower(), value.strip())
                for key, _, value in (line.partition(":") for line in stanza.splitlines() if not line.startswith("#"))
            )
            if "deb" in fields.get("types", "").split():
                for uri in fields.get("uris", "").split():
                    candidates.append((uri, fields.get("suites", "").split()))
    legacy = etc / "apt" / "sources.list"
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb":
                candidates.append((words[1], [words[2]]))
    for uri, suites in candidates:
        if codename in suites and "security" not in uri:
            return uri.rstrip("/")
    raise SuiteError(f"no Debian archive for {codename or 'this system'} in the host's apt sources; "
                     "set SYSGENID_DEBIAN_MIRROR")


def mirror() -> str:
    return os.environ.get("SYSGENID_DEBIAN_MIRROR") or host_mirror()


def root_path(suite: str) -> Path:
    return SUITES_DIR / suite / "root"


def ensure_tool(command: str, package: str) -> None:
    if shutil.which(command):
        return
    log(f"installing {package}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def ensure_root(suite: str) -> Path:
    """The suite's root, made with mmdebstrap when missing or made with other packages."""
    check_suite(suite)
    if os.geteuid() != 0:
        raise SuiteError("a suite's root needs root to make and enter (mmdebstrap, mount namespaces)")
    root = root_path(suite)
    wanted = {"suite": suite, "packages": SUITE_PACKAGES[suite]}
    stamp = root / STAMP
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        _make_mount_points(root)
        return root
    ensure_tool("mmdebstrap", "mmdebstrap")
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    source = mirror()
    log(f"making the {suite} root from {source} (once)")
    command = [
        "mmdebstrap", "--variant=apt", "--quiet", *(f"--aptopt={option}" for option in APT_OPTIONS),
        # the package lists stay, for apt-get download of the kernel images
        "--skip=cleanup/apt/lists", f"--include={','.join(SUITE_PACKAGES[suite])}",
        suite, str(root), source,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise SuiteError(f"mmdebstrap {suite} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    _make_mount_points(root)
    stamp.write_text(json.dumps(wanted))
    return root


def _make_mount_points(root: Path) -> None:
    for mount_point in (PROJECT_MOUNT, REPORT_MOUNT, OLD_ROOT):
        (root / mount_point.lstrip("/")).mkdir(exist_ok=True)


def enter_root_command(root: Path, project: Path, report: Path | None, cwd: str, argv: list[str]) -> list[str]:
    """The command that runs ``argv`` in ``root`` with /proc, /sys, /dev, a private /tmp and
    /run, the project at /project and ``report`` at /report, in a mount namespace of its own.

    The root becomes the namespace's root with pivot_root, not chroot: in a chroot the
    kernel refuses unshare(CLONE_NEWUSER), which the user-namespace tests need.
    """
    script = "\n".join([
        "set -e",
        'R="$1"; P="$2"; O="$3"; D="$4"; shift 4',
        'mount --rbind "$R" "$R"',  # pivot_root wants the new root to be a mount point
        'mount -t proc proc "$R/proc"',
        'mount --rbind /sys "$R/sys"',
        'mount --rbind /dev "$R/dev"',
        'mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"',
        'mount -t tmpfs tmpfs "$R/run"',
        f'mount --bind "$P" "$R{PROJECT_MOUNT}"',
        f'[ -z "$O" ] || mount --bind "$O" "$R{REPORT_MOUNT}"',
        f'cd "$R" && pivot_root . "{OLD_ROOT.lstrip("/")}" && umount -l {OLD_ROOT}',
        'exec /usr/bin/env -C "$D" PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root LANG=C.UTF-8 "$@"',
    ])
    return ["unshare", "--mount", "--propagation", "private", "bash", "-c", script, "bash",
            str(root), str(project), str(report or ""), cwd, *argv]


def run_in_root(
    root: Path,
    argv: list[str],
    *,
    report: Path | None = None,
    cwd: str = PROJECT_MOUNT,
    capture: bool = False,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in ``root`` (see enter_root_command): nothing of it outlives the command."""
    # pip inside the root reaches the registry as the host does: its resolver and trust store
    for name in ("etc/resolv.conf", "etc/ssl/certs/ca-certificates.crt"):
        (root / name).unlink(missing_ok=True)
        if (Path("/") / name).exists():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path("/") / name, root / name)
    command = enter_root_command(root, PROJECT, report, cwd, argv)
    return subprocess.run(command, capture_output=capture, text=True, check=check)


@dataclass(frozen=True)
class Kernel:
    """A kernel to boot: its release, image, the tree whose lib/modules has its modules,
    and how to build a module for it."""

    suite: str
    flavour: str
    release: str
    vmlinuz: Path
    modules_base: Path  # modprobe -d: <base>/lib/modules/<release>
    root: Path | None  # the suite root to build in; None: the host

    @property
    def headers(self) -> str:
        """The headers' directory as the build sees it (inside the root, or on the host)."""
        return f"/lib/modules/{self.release}/build" if self.root is None else f"/usr/src/linux-headers-{self.release}"

    @property
    def config(self) -> Path:
        """The kernel's build configuration (the headers keep it as .config)."""
        if self.root is None:
            return Path(f"/boot/config-{self.release}")
        return self.root / "usr" / "src" / f"linux-headers-{self.release}" / ".config"


def host_kernel(flavour: str) -> Kernel:
    suffix = "-cloud-amd64" if flavour == "cloud" else "-amd64"
    modules = Path("/lib/modules")
    releases = sorted(
        (p.name for p in modules.iterdir()
         if p.name.endswith(suffix) and (flavour == "cloud" or "cloud" not in p.name) and (p / "build").exists()),
        key=_release_key,
    ) if modules.exists() else []
    for release in reversed(releases):
        if Path(f"/boot/vmlinuz-{release}").exists():
            return Kernel(HOST, flavour, release, Path(f"/boot/vmlinuz-{release}"), Path("/"), None)
    package = KERNEL_FLAVOURS[flavour]
    raise SuiteError(f"no {flavour} kernel with headers on the host ({package}, {package.replace('image', 'headers')})")


def _release_key(release: str) -> list[int]:
    return [int(part) for part in re.findall(r"\d+", release)]


def suite_kernel(suite: str, flavour: str) -> Kernel:
    """The suite's newest kernel of that flavour, extracted once under the suite's directory."""
    if suite == HOST:
        return host_kernel(flavour)
    root = ensure_root(suite)
    if flavour not in KERNEL_FLAVOURS:
        raise SuiteError(f"unknown kernel flavour {flavour!r}: cloud or generic")
    tree = SUITES_DIR / suite / f"kernel-{flavour}"
    if not (tree / STAMP).exists():
        if tree.exists():
            shutil.rmtree(tree)
        tree.mkdir(parents=True)
        packages = _kernel_packages(root, KERNEL_FLAVOURS[flavour])
        log(f"extracting {', '.join(packages)}")
        # the root's apt configuration has APT_OPTIONS (mmdebstrap writes --aptopt there)
        run_in_root(root, ["sh", "-c", f"cd /tmp && apt-get -q download {shlex.join(packages)} >/dev/null "
                           f"&& mv /tmp/*.deb {REPORT_MOUNT}/"], report=tree)
        for deb in sorted(tree.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
            deb.unlink()
        # merged /usr: sid ships its modules under usr/lib only; modprobe -d looks in lib/
        if not (tree / "lib").exists() and (tree / "usr" / "lib").exists():
            (tree / "lib").symlink_to("usr/lib")
        (tree / STAMP).write_text(json.dumps({"packages": packages}))
    releases = sorted((p.name for p in (tree / "lib" / "modules").iterdir()), key=_release_key)
    if not releases:
        raise SuiteError(f"{tree}: no modules directory in the extracted kernel")
    release = releases[-1]
    for vmlinuz in (tree / "boot" / f"vmlinuz-{release}", tree / "lib" / "modules" / release / "vmlinuz"):
        if vmlinuz.exists():
            break
    else:
        raise SuiteError(f"{tree}: no vmlinuz for {release}")
    if not (tree / "lib" / "modules" / release / "modules.dep").exists():
        # depmod runs in the package's postinst, which extracting skips
        subprocess.run(["depmod", "-b", str(tree), release], check=True)
    if not (root / "usr" / "src" / f"linux-headers-{release}").exists():
        raise SuiteError(f"the {suite} root has no headers for {release}: its kernel and headers packages differ")
    return Kernel(suite, flavour, release, vmlinuz, tree, root)


def _kernel_packages(root: Path, meta: str) -> list[str]:
    """The packages that hold the files of ``meta``'s kernel (image, binary, modules)."""
    wanted: list[str] = []
    queue = [meta]
    while queue:
        package = queue.pop()
        if package in wanted:
            continue
        wanted.append(package)
        depends = run_in_root(root, ["apt-cache", "depends", "--no-recommends", "--no-suggests", package],
                              capture=True).stdout
        for line in depends.splitlines():
            kind, _, name = line.strip().partition(": ")
            if kind.lstrip("|") == "Depends" and _KERNEL_PARTS.match(name):
                queue.append(name)
    return [p for p in wanted if p != meta]


def build_module(kernel: Kernel, source: Path, build_dir: Path, make_args: list[str]) -> Path:
    """Build a module from ``source`` (a directory with a Kbuild file) for ``kernel``, with
    W=1, in the kernel's suite root when it has one; the output goes to build.log there."""
    if build_dir.exists():
        shutil.rmtree(build_dir)
    shutil.copytree(source, build_dir, ignore=shutil.ignore_patterns("vm", "*.o", "*.ko", ".*.cmd", "dkms*"))
    make = ["make", "-C", kernel.headers, "W=1", *make_args, "modules"]
    if kernel.root is None:
        done = subprocess.run([*make, f"M={build_dir}"], capture_output=True, text=True, check=False)
    else:
        done = run_in_root(kernel.root, [*make, f"M={REPORT_MOUNT}"], report=build_dir, capture=True, check=False)
    output = done.stdout + done.stderr
    (build_dir / "build.log").write_text(output)
    warnings = [line for line in output.splitlines() if "warning:" in line or "error:" in line or "Error " in line]
    if done.returncode != 0 or warnings:
        raise SuiteError(f"module build for {kernel.release} failed ({len(warnings)} warnings/errors):\n{output}")
    built = sorted(build_dir.glob("*.ko"))
    if len(built) != 1:
        raise SuiteError(f"expected one .ko in {build_dir}, found {[p.name for p in built]}")
    return built[0]


def venv_python(version: str) -> str:
    """The path, inside the suite's root, of the venv with the project for Python ``version``."""
    return f"/opt/venvs/{version}/bin/python"


def ensure_venv(suite: str, version: str, extras: str = "test") -> Path:
    """A venv in the suite's root with Python ``version`` and the project (reinstalled)."""
    if version not in PYTHONS.get(suite, []):
        raise SuiteError(f"the {suite} root has no Python {version} (it has: {', '.join(PYTHONS.get(suite, []))})")
    root = ensure_root(suite)
    python = venv_python(version)
    if not (root / python.lstrip("/")).exists():
        log(f"making a Python {version} venv in the {suite} root")
        run_in_root(root, [f"python{version}", "-m", "venv", str(Path(python).parent.parent)])
    run_in_root(root, [python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                       "--force-reinstall", "--no-deps", f"{PROJECT_MOUNT}"])
    run_in_root(root, [python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                       f"{PROJECT_MOUNT}[{extras}]"])
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("root", help="make (or reuse) a suite's root; print its path").add_argument(
        "suite", choices=SUITES)
    kernel = commands.add_parser("kernel", help="extract a suite's kernel; print its release and image")
    kernel.add_argument("suite", choices=[HOST, *SUITES])
    kernel.add_argument("flavour", choices=sorted(KERNEL_FLAVOURS))
    venv = commands.add_parser("venv", help="make a venv with the project in a suite's root")
    venv.add_argument("suite", choices=sorted(PYTHONS))
    venv.add_argument("version")
    run = commands.add_parser("run", help="run a command in a suite's root, the project at /project")
    run.add_argument("suite", choices=SUITES)
    run.add_argument("argv", nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "root":
            print(ensure_root(args.suite))
        elif args.command == "kernel":
            found = suite_kernel(args.suite, args.flavour)
            print(found.release, found.vmlinuz)
        elif args.command == "venv":
            ensure_venv(args.suite, args.version)
            print(venv_python(args.version))
        else:
            return run_in_root(ensure_root(args.suite), args.argv, check=False).returncode
    except SuiteError as exc:
        print(f"[suites] {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"[suites] {shlex.join(str(a) for a in exc.cmd[-4:])}: exit {exc.returncode}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
