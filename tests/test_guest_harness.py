"""The guest harness's own logic, on the host: what counts as trouble, and process hygiene."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from scripts import load_script

HARNESS = Path(__file__).resolve().parent.parent / "kernel" / "vm" / "run_guest.py"


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    return load_script("run_guest", HARNESS)


@pytest.mark.parametrize(
    "line",
    [
        "[   12.3] WARNING: CPU: 0 PID: 1 at kernel/sysgenid.c:100 sg_bump+0x1/0x2 [sysgenid]",
        "[   12.3] BUG: sleeping function called from invalid context at kernel/locking/mutex.c:283",
        "[   12.3] Oops: 0000 [#1] PREEMPT SMP NOPTI",
        "[   12.3] general protection fault, probably for non-canonical address",
        "[   12.3] Call Trace:",
        "[   12.3] list_del corruption. prev->next should be ffff",
    ],
)
def test_kernel_trouble_is_detected(harness: ModuleType, line: str) -> None:
    assert harness.KERNEL_TROUBLE.search(line)


@pytest.mark.parametrize(
    "line",
    [
        "[   14.9] sysgenid: loading out-of-tree module taints kernel.",
        "[   14.9] sysgenid: module verification failed: signature and/or required key missing - tainting kernel",
        "[   14.9] sysgenid: /dev/sysgenid ready, abi v4",
        "[   20.1] sysgenid: abi=5 is not 4 or 8",
        # TCG's boot: "oops" inside a word, in lower case, is no oops
        "[    0.1] calibrate_delay_direct() failed to get a good estimate for loops_per_jiffy.",
        "[    0.2] Probing for loops: warning: nothing wrong",
    ],
)
def test_normal_lines_are_not_trouble(harness: ModuleType, line: str) -> None:
    assert not harness.KERNEL_TROUBLE.search(line)


def test_a_bad_module_argument_is_refused(harness: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"not a \.ko file or a source directory"):
        harness.resolve_module(str(tmp_path / "missing"), "6.1.0-0-cloud-amd64", tmp_path, [])


def test_the_guest_job_runs_pytest_on_the_kernel_backends(harness: ModuleType, tmp_path: Path) -> None:
    args = harness.argparse.Namespace(python="/usr/bin/python3", abi="v8", no_abi_param=True, pytest_args=["-k", "x"],
                                      script=None, flavours="", driver=None)
    job = harness.guest_job(args, Path("/m/driver.ko"), tmp_path)
    assert "--device-backends=kernel" in job and "--kernel-module=/m/driver.ko" in job
    assert "--kernel-abis=v8" in job and "--kernel-no-abi-param" in job and "-k x" in job
    assert f"--junitxml={tmp_path / 'junit.xml'}" in job


def test_the_guest_job_can_run_a_script_instead(harness: ModuleType, tmp_path: Path) -> None:
    args = harness.argparse.Namespace(python="/usr/bin/python3", abi="v8", no_abi_param=False,
                                      pytest_args=["--backend", "kernel-v8"], script=Path("benchmarks/run.py"),
                                      flavours="", driver=None)
    job = harness.guest_job(args, Path("/m/driver.ko"), tmp_path)
    assert f"benchmarks/run.py --kernel-module=/m/driver.ko --out={tmp_path} --backend kernel-v8" in job
    assert "-m pytest" not in job


def test_stop_ends_every_process_it_started(harness: ModuleType) -> None:
    guest = harness.Guest()
    for _ in range(2):
        guest.processes.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
    guest.stop()
    assert all(process.poll() is not None for process in guest.processes)


def test_a_missing_script_is_refused_before_anything_runs(harness: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        harness.main(["--no-install", "--script", str(tmp_path / "missing.py")])
    assert exit_info.value.code == 2


class BootReachedError(Exception):
    """Raised by a stand-in for boot(): the run got as far as starting QEMU."""


@pytest.fixture
def fresh_clone(harness: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The harness as in a fresh clone: no build/guest yet; no QEMU started, no root needed."""
    monkeypatch.setattr(harness, "WORK", tmp_path / "clone" / "build" / "guest")
    kernel = harness.suites.Kernel("host", "cloud", "6.1.0-0-cloud-amd64", Path("/boot/vmlinuz"), Path("/"), None)

    def suite_kernel(suite: str, flavour: str) -> object:
        assert (suite, flavour) == ("host", "cloud")
        return kernel

    monkeypatch.setattr(harness.suites, "suite_kernel", suite_kernel)

    def build_initramfs(kernel: object, initrd: Path) -> None:
        # as mkinitramfs.sh does, write the archive where it is told (its directory must exist)
        initrd.write_bytes(b"initramfs")

    monkeypatch.setattr(harness, "build_initramfs", build_initramfs)

    def boot(*args: object) -> None:
        raise BootReachedError

    monkeypatch.setattr(harness, "boot", boot)
    module = tmp_path / "driver.ko"
    module.write_bytes(b"")
    return module


def test_out_works_in_a_fresh_clone(harness: ModuleType, fresh_clone: Path, tmp_path: Path) -> None:
    with pytest.raises(BootReachedError):
        harness.main(["--no-install", "--module", str(fresh_clone), "--out", str(tmp_path / "reports")])
    assert (harness.WORK / "initrd-6.1.0-0-cloud-amd64.cpio.gz").exists()
    assert (tmp_path / "reports" / "job.sh").exists()


def test_a_failed_run_does_not_block_the_next(harness: ModuleType, fresh_clone: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    for _ in range(2):  # the module is refused after the report directory was made
        with pytest.raises(SystemExit, match=r"not a \.ko file"):
            harness.main(["--no-install", "--module", str(tmp_path / "missing.ko"), "--out", str(out)])
    with pytest.raises(BootReachedError):
        harness.main(["--no-install", "--module", str(fresh_clone), "--out", str(out)])


def test_a_directory_of_the_users_is_left_alone(harness: ModuleType, fresh_clone: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="not touching it"):
        harness.main(["--no-install", "--module", str(fresh_clone), "--out", str(out)])
    assert (out / "notes.txt").read_text() == "keep me"


def test_the_guest_job_names_the_flavours_and_the_driver(harness: ModuleType, tmp_path: Path) -> None:
    args = harness.argparse.Namespace(python="/usr/bin/python3", abi="v4,v8", no_abi_param=False, pytest_args=[],
                                      script=None, flavours="amazon-linux,v4-patch", driver=None)
    job = harness.guest_job(args, Path("/m/sysgenid.ko"), tmp_path)
    assert "--kernel-flavours=amazon-linux,v4-patch" in job and "--kernel-driver" not in job
    args.flavours, args.driver = "", "amazon-linux"
    job = harness.guest_job(args, Path("/m/other.ko"), tmp_path)
    assert "--kernel-driver=amazon-linux" in job and "--kernel-flavours" not in job


# -- other Debian suites' kernels and Pythons (kernel/vm/suites.py) ---------------------------


def test_the_guest_job_in_a_suite_root_pivots_there(harness: ModuleType, tmp_path: Path) -> None:
    args = harness.argparse.Namespace(python="/opt/venvs/3.15/bin/python", abi="v4,v8", no_abi_param=False,
                                      pytest_args=[], script=None, flavours="", driver=None)
    root = tmp_path / "sid-root"
    job = harness.guest_job(args, tmp_path / "build" / "sysgenid.ko", tmp_path, root)
    # the root becomes the mount namespace's root (a chroot would refuse user namespaces)
    assert "unshare --mount --propagation private" in job and "pivot_root" in job and "chroot" not in job
    assert f"{root} {harness.PROJECT} {tmp_path} /project" in job
    # paths as the tests see them inside the root
    assert "--kernel-module=/report/build/sysgenid.ko" in job and "--junitxml=/report/junit.xml" in job
    assert "SYSGENID_REPORT_DIR=/report /opt/venvs/3.15/bin/python -m pytest" in job
    assert f"dmesg > {tmp_path / 'dmesg.txt'}" in job  # the guest's own path, outside the root


def test_a_python_missing_from_the_root_is_refused(
    harness: ModuleType, fresh_clone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "sid-root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "python3.15").symlink_to("/usr/bin/python3.15")  # dangling on the host: fine

    def ensure_root(suite: str) -> Path:
        return root

    monkeypatch.setattr(harness.suites, "ensure_root", ensure_root)
    out = tmp_path / "reports"
    with pytest.raises(SystemExit, match="not in the sid root"):
        harness.main(["--no-install", "--module", str(fresh_clone), "--root", "sid", "--python", "/opt/missing",
                      "--out", str(out)])
    assert not out.exists()  # refused before anything was made
    with pytest.raises(BootReachedError):
        harness.main(["--no-install", "--module", str(fresh_clone), "--root", "sid", "--python",
                      "/usr/bin/python3.15", "--out", str(out)])
    assert "--kernel-module=/report/build/driver.ko" in (out / "job.sh").read_text()  # copied where the root sees it


def test_an_unknown_kernel_suite_is_a_usage_error(harness: ModuleType) -> None:
    with pytest.raises(SystemExit) as exit_info:
        harness.main(["--no-install", "--kernel", "buster"])
    assert exit_info.value.code == 2


@pytest.fixture(scope="module")
def suites(harness: ModuleType) -> ModuleType:
    module: ModuleType = harness.suites
    return module


def _etc(tmp_path: Path, codename: str = "bookworm") -> Path:
    etc = tmp_path / "etc"
    (etc / "apt" / "sources.list.d").mkdir(parents=True)
    (etc / "os-release").write_text(f'NAME="Debian GNU/Linux"\nVERSION_CODENAME={codename}\n')
    return etc


def test_the_mirror_is_the_one_the_hosts_apt_uses(suites: ModuleType, tmp_path: Path) -> None:
    etc = _etc(tmp_path)
    (etc / "apt" / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "# the archive\nTypes: deb deb-src\nURIs: http://mirror.invalid/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert suites.host_mirror(etc) == "http://mirror.invalid/debian"


def test_the_mirror_from_a_one_line_sources_list(suites: ModuleType, tmp_path: Path) -> None:
    etc = _etc(tmp_path)
    (etc / "apt" / "sources.list").write_text(
        "# comment\ndeb-src http://src.invalid/debian bookworm main\n"
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://lines.invalid/debian bookworm main\n"
    )
    assert suites.host_mirror(etc) == "http://lines.invalid/debian"


def test_no_mirror_for_the_hosts_suite_is_a_clear_error(suites: ModuleType, tmp_path: Path) -> None:
    etc = _etc(tmp_path, codename="trixie")
    (etc / "apt" / "sources.list").write_text("deb http://lines.invalid/debian bookworm main\n")
    with pytest.raises(suites.SuiteError, match=r"no Debian archive for trixie.*SYSGENID_DEBIAN_MIRROR"):
        suites.host_mirror(etc)


def test_unknown_suites_and_pythons_are_refused_before_anything_runs(
    suites: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_root(suite: str) -> None:
        raise AssertionError("nothing may be made")

    monkeypatch.setattr(suites, "ensure_root", no_root)
    with pytest.raises(suites.SuiteError, match="unknown suite 'buster'"):
        suites.check_suite("buster")
    with pytest.raises(suites.SuiteError, match=r"no Python 3\.9"):
        suites.ensure_venv("sid", "3.9")
    with pytest.raises(suites.SuiteError, match=r"no Python 3\.15"):
        suites.ensure_venv("trixie", "3.15")
    with pytest.raises(SystemExit) as exit_info:
        suites.main(["root", "buster"])
    assert exit_info.value.code == 2


def test_a_kernels_packages_are_found_through_its_dependencies(
    suites: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    depends = {
        "linux-image-cloud-amd64": (
            "  Depends: linux-base-cloud-amd64\n  Depends: linux-image-7.2.13+deb14-cloud-amd64\n"
        ),
        "linux-image-7.2.13+deb14-cloud-amd64": (
            " |Depends: dracut\n    initramfs-tools\n  Depends: linux-binary-7.2.13+deb14-cloud-amd64\n"
            "  Depends: linux-modules-7.2.13+deb14-cloud-amd64\n"
        ),
        "linux-binary-7.2.13+deb14-cloud-amd64": "  Depends: linux-base-7.2.13+deb14-cloud-amd64\n",
        "linux-modules-7.2.13+deb14-cloud-amd64": "",
    }

    def run_in_root(root: Path, argv: list[str], **options: object) -> subprocess.CompletedProcess[str]:
        package = argv[-1]
        return subprocess.CompletedProcess(argv, 0, f"{package}\n{depends[package]}", "")

    monkeypatch.setattr(suites, "run_in_root", run_in_root)
    found = suites._kernel_packages(tmp_path, "linux-image-cloud-amd64")
    assert sorted(found) == [
        "linux-binary-7.2.13+deb14-cloud-amd64",
        "linux-image-7.2.13+deb14-cloud-amd64",
        "linux-modules-7.2.13+deb14-cloud-amd64",
    ]


def test_entering_a_root_binds_the_project_and_the_report(suites: ModuleType, tmp_path: Path) -> None:
    command = suites.enter_root_command(tmp_path / "root", Path("/p"), tmp_path / "out", "/project", ["python3", "-V"])
    assert command[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert command[-6:] == [str(tmp_path / "root"), "/p", str(tmp_path / "out"), "/project", "python3", "-V"]
    script = command[6]
    for mount_point in ("/project", "/report", "/oldroot"):
        assert mount_point in script
    assert "pivot_root" in script and "umount -l /oldroot" in script


# -- the table of tested kernels (kernel/vm/matrix.py) -----------------------------------------


@pytest.fixture(scope="module")
def matrix() -> ModuleType:
    return load_script("matrix", HARNESS.parent / "matrix.py")


def _summary(build: Path, name: str, cases: list[str], **fields: object) -> None:
    """A run's summary.json, and its junit.xml with one test case per entry of ``cases``
    ("pass", "fail", "xfail" or "skip")."""
    directory = build / "guest" / name
    directory.mkdir(parents=True)
    summary = {"kernel": "7.2.13+deb14-cloud-amd64", "kernel_suite": "sid", "python": "3.15.2",
               "userland": "Debian GNU/Linux forky/sid", "make_args": [], "abis": "v4,v8", "flavours": "",
               "selection": "every device test", "status": 0}
    (directory / "summary.json").write_text(json.dumps({**summary, **fields}))
    inner = {"pass": "", "fail": '<failure message="x"/>', "xfail": '<skipped type="pytest.xfail" message="q"/>',
             "skip": '<skipped type="pytest.skip" message="s"/>'}
    body = "".join(f'<testcase classname="t" name="t{i}">{inner[case]}</testcase>' for i, case in enumerate(cases))
    (directory / "junit.xml").write_text(f'<testsuites><testsuite name="kernel-device">{body}</testsuite></testsuites>')


def test_the_table_names_the_packages_module(matrix: ModuleType, tmp_path: Path) -> None:
    _summary(tmp_path, "deb", ["pass"] * 22, python="3.11.7", selection=["tests/test_kernel_module.py"],
             module="build/deb/modules/7.2.13+deb14-cloud-amd64/sysgenid.ko")
    assert "conformance (kernel_module); ABIs v4,v8, the module the Debian package built |" in matrix.table(tmp_path)


def test_the_table_says_what_ran_where(matrix: ModuleType, tmp_path: Path) -> None:
    _summary(tmp_path, "kernel", ["pass"] * 1200 + ["xfail"] * 7 + ["skip"] * 2, flavours="amazon-linux,v4-patch")
    _summary(tmp_path, "kernel-trixie", ["pass"] * 10 + ["fail"] * 2, kernel="6.12.117+deb13-cloud-amd64",
             kernel_suite="trixie", python="3.11.7", selection=["tests/test_conformance.py", "tests/test_model.py"],
             status=1)
    (tmp_path / "dkms").mkdir()
    (tmp_path / "dkms" / "7.2.13+deb14-cloud-amd64").write_text("installed, signed (dkms-3.2.2)\n")
    (tmp_path / "clones-sid").mkdir()
    (tmp_path / "clones-sid" / "results.json").write_text(json.dumps(
        {"kernel": "7.2.13+deb14-amd64", "clones": [{}, {}], "failures": []}))
    text = matrix.table(tmp_path)
    lines = text.splitlines()
    assert lines[0].startswith("| Kernel |") and len(lines) == 5
    assert "| `7.2.13+deb14-cloud-amd64` | Debian sid | the whole device suite; ABIs v4,v8, flavours amazon-linux," \
        in text
    assert "| 1,200 passed, 7 expected failures (quirks), 2 skipped | installed, signed (dkms-3.2.2) | pass |" in text
    assert "conformance (conformance, model)" in text and "| 10 passed, 2 failed |  | FAIL (1) |" in text
    assert "| `7.2.13+deb14-amd64` | Debian sid | the clone and lifecycle test: prepare and resume, 2 clones" in text


def test_the_table_goes_between_the_markers(matrix: ModuleType, tmp_path: Path) -> None:
    document = tmp_path / "page.md"
    document.write_text(f"# Kernels\n\nbefore\n{matrix.START}\nold table\n{matrix.END}\nafter\n")
    matrix.update_docs(document, "| new |\n")
    content = document.read_text()
    assert "old table" not in content and "| new |\n" in content
    assert content.startswith("# Kernels\n\nbefore\n") and content.endswith(f"{matrix.END}\nafter\n")
    unmarked = tmp_path / "other.md"
    unmarked.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no <!-- tested-kernels:start -->"):
        matrix.update_docs(unmarked, "| new |\n")
    assert unmarked.read_text() == "no markers\n"


def test_no_reports_is_an_error_not_an_empty_table(matrix: ModuleType, tmp_path: Path) -> None:
    assert matrix.main(["--build", str(tmp_path)]) == 1


# -- the clone test's restore-to-ready figures (kernel/vm/clones.py) ------------------------


@pytest.fixture(scope="module")
def clones(harness: ModuleType) -> ModuleType:
    return load_script("clones", HARNESS.with_name("clones.py"))


def test_restore_to_ready_places_cont_on_the_guests_clock(clones: ModuleType) -> None:
    """The guest's clock is host - 100 s; the lines took 1 ms at best to arrive; cont came at
    host 1000.000: the figures are guest stamps less cont on the guest's clock, late by that
    1 ms. Lines from before cont (the snapshot's) are left out."""
    def guest(host_seconds: float) -> int:
        return int((host_seconds - 100) * 1e9)

    clone = type("Clone", (), {"name": "clone-1", "clock_lines": [
        (999.5, f"CLOCK {guest(999.0)}"),  # before cont: ignored (its delay would be 500 ms anyway)
        (1000.011, f"C-ACK 1 {guest(1000.009)}"),
        (1000.020, f"LIB-ACK 1 {guest(1000.012)}"),
        (1000.030, f"PY-ACK 1 {guest(1000.011)}"),
        *[(1001.0 + i * 0.002 + 0.001 + (i % 3) * 0.001, f"CLOCK {guest(1001.0 + i * 0.002)}") for i in range(20)],
    ]})()
    figures = clones.restore_to_ready(clone, 1000.0, 1, {"monotonic_ns": guest(1006.5)})
    assert figures == {"c_watcher_ack_ms": 10.0, "python_callback_ack_ms": 12.0, "library_ack_ms": 13.0,
                       "ready_ms": 6501.0, "library_over_floor": 1.3, "library_over_python": 1.08}


def test_restore_to_ready_names_a_missing_ack(clones: ModuleType) -> None:
    log = type("Log", (), {"name": "clone-1.serial"})()
    clone = type("Clone", (), {"name": "clone-1", "log": log, "clock_lines": [
        (1000.011, "C-ACK 1 900009000000"),
        (1000.012, "PY-ACK 1 900010000000"),
        *[(1001.0 + i * 0.002, f"CLOCK {int((901.0 + i * 0.002) * 1e9)}") for i in range(20)],
    ]})()
    with pytest.raises(RuntimeError, match=re.escape("no whole LIB-ACK line for generation 1; see clone-1.serial")):
        clones.restore_to_ready(clone, 1000.0, 1, {"monotonic_ns": 0})
