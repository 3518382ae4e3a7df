"""Project tasks. ``nox`` (the default sessions) is what CI runs: lint, types, the docs
site, the sdist and the wheel (checked, and the demo run from the installed wheel), the host
suite on every supported Python (3.14 and 3.15 in a Debian sid root), the
client integrations against real PostgreSQL and Redis servers, the kernel-device suite in the
QEMU guest on the newest Debian kernel with Python 3.15 (our module in both ABIs and both
shipped-driver flavours), the driver's conformance on the other kernels (the host's, Debian
13's) and against a one-ABI build without a parameter, DKMS, and the clone test on the host's
and the newest generic kernel."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]  # the host's (pyenv); 3.10 is past its end of life
SID_PYTHONS = ["3.14", "3.15"]  # Debian sid's, in a root of that suite (kernel/vm/suites.py)
GUEST_PYTHON = "3.11"
NEWEST_PYTHON = "3.15"
# The driver-level tests run on every kernel; the library's whole suite runs on the newest.
CONFORMANCE = ["tests/test_conformance.py", "tests/test_kernel_module.py", "tests/test_model.py"]

nox.options.error_on_missing_interpreters = True
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = [
    "lint", "typecheck", "docs", "package", "tests", "integrations", "tests-sid", "kernel", "kernel-host",
    "kernel-trixie", "kernel-fixed-abi", "dkms", "deb", "clones", "clones-sid", "bench-smoke", "matrix",
]


def _expose_pyenv_interpreters() -> None:
    """Let nox find every pyenv-installed Python as ``python3.X``.

    pyenv's shims answer only for the versions in PYENV_VERSION (which ``pyenv exec`` sets
    to the one running nox), so add the newest installed patch release of each we test.
    """
    if shutil.which("pyenv") is None:
        return
    installed = subprocess.run(["pyenv", "versions", "--bare"], capture_output=True, text=True).stdout.split()
    chosen = []
    for wanted in PYTHONS:
        matches = sorted((v for v in installed if v.startswith(wanted + ".")), key=lambda v: int(v.split(".")[2]))
        if matches:
            chosen.append(matches[-1])
    current = [v for v in os.environ.get("PYENV_VERSION", "").split(":") if v]
    os.environ["PYENV_VERSION"] = ":".join(current + [v for v in chosen if v not in current])


_expose_pyenv_interpreters()


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The suite on the host: the simulator backends, asyncio, uvloop and trio.

    The simulator's shipped-driver flavours run on one Python: their quirks do not depend on it.
    """
    session.install("-e", ".[test]")
    report = f"build/reports/host-{session.python}.xml"
    flavours = [] if session.python == GUEST_PYTHON else ["--sim-flavours="]
    session.run("pytest", f"--junitxml={report}", *flavours, *session.posargs)


# Debian's package -> a file only it installs (the client packages share /usr/lib/postgresql).
INTEGRATION_SERVERS = {"postgresql": "/usr/lib/postgresql/*/bin/postgres", "redis-server": "/usr/bin/redis-server"}


@nox.session(python=GUEST_PYTHON)
def integrations(session: nox.Session) -> None:
    """The client integrations against the real libraries (the ``integrations`` extra) and real
    PostgreSQL and Redis servers, which the tests start on loopback from Debian's packages
    (installed here when missing: root)."""
    missing = [package for package, pattern in INTEGRATION_SERVERS.items() if not glob.glob(pattern)]
    if missing:
        apt_env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run("apt-get", "update", "-q", external=True, env=apt_env)
        session.run("apt-get", "install", "-y", "-q", "--no-install-recommends", *missing, external=True, env=apt_env)
    session.install("-e", ".[test,integrations]")
    session.run("pytest", "--integrations", "--junitxml=build/reports/integrations.xml",
                *(session.posargs or ["tests/integrations"]))


def _sid_venv(session: nox.Session, version: str) -> str:
    """A venv with the project (reinstalled) in the sid root, made once; its Python's path there
    (what kernel/vm/suites.py prints last)."""
    output = session.run("python3", "kernel/vm/suites.py", "venv", "sid", version, external=True, silent=True)
    assert isinstance(output, str)
    return output.strip().splitlines()[-1]


@nox.session(name="tests-sid", python=False)
@nox.parametrize("version", SID_PYTHONS, ids=SID_PYTHONS)
def tests_sid(session: nox.Session, version: str) -> None:
    """The host suite on Debian sid's Python 3.14 and 3.15, in a root of that suite that this
    session makes (root; mmdebstrap, once). The suite runs in its own mount namespace, the
    project bound at /project."""
    python = _sid_venv(session, version)
    session.run(
        "python3", "kernel/vm/suites.py", "run", "sid", "--",
        "/usr/bin/env", f"PATH={python.rsplit('/', 1)[0]}:/usr/local/bin:/usr/bin:/bin",
        python, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml=build/reports/host-{version}.xml",
        "--sim-flavours=", *session.posargs, external=True,
    )


def _run_guest(session: nox.Session, *args: str) -> None:
    """Install the package, then run the device tests in the guest with this venv's Python.

    Reports go to build/guest/<session name>/ (replaced on each run) unless --out is given.
    """
    session.install(".[test]")
    python = session.run("python", "-c", "import sys; print(sys.executable)", silent=True)
    assert isinstance(python, str)
    _guest(session, "--python", python.strip(), *args)


def _guest(session: nox.Session, *args: str) -> None:
    out = [] if "--out" in args else ["--out", f"build/guest/{session.name}"]
    session.run("python3", "kernel/vm/run_guest.py", *out, *args, external=True)


@nox.session(python=False)
def kernel(session: nox.Session) -> None:
    """The device tests against the kernel module in a QEMU guest, on the newest Debian kernel
    with Python 3.15, both from a Debian sid root (root; installs Debian packages, makes the root).

    Our module in both ABIs and in the flavours that behave as the shipped drivers. Arguments
    go to kernel/vm/run_guest.py, the last word winning: ``nox -s kernel -- --kernel host --module
    driver.ko --abi v8 --driver amazon-linux`` (a built module loads only on its own kernel).
    """
    python = _sid_venv(session, NEWEST_PYTHON)
    flavours = [] if "--module" in session.posargs else ["--flavours", "amazon-linux,v4-patch"]
    _guest(session, "--kernel", "sid", "--root", "sid", "--python", python, *flavours, *session.posargs)


@nox.session(name="kernel-host", python=GUEST_PYTHON)
def kernel_host(session: nox.Session) -> None:
    """The driver's conformance, both ABIs and the shipped-driver flavours, on the host's own
    cloud kernel (Debian 12: 6.1). Arguments: pytest's (default: the conformance tests)."""
    _run_guest(session, "--flavours", "amazon-linux,v4-patch", "--", *(session.posargs or CONFORMANCE))


@nox.session(name="kernel-trixie", python=GUEST_PYTHON)
def kernel_trixie(session: nox.Session) -> None:
    """The driver's conformance on Debian 13's cloud kernel (6.12), the module built in a
    trixie root with that suite's compiler and headers."""
    _run_guest(session, "--kernel", "trixie", "--flavours", "amazon-linux,v4-patch",
               "--", *(session.posargs or CONFORMANCE))


@nox.session(name="kernel-fixed-abi", python=GUEST_PYTHON)
def kernel_fixed_abi(session: nox.Session) -> None:
    """The device's conformance against a build with one ABI and no abi= parameter, as a
    distribution ships it. The build differs only in its load parameters: the library's whole
    suite on v8 runs in the kernel session."""
    _run_guest(session, "--module", "kernel", "--make-arg", "FIXED_ABI=8", "--abi", "v8", "--no-abi-param",
               "--", *(session.posargs or CONFORMANCE))


@nox.session(python=GUEST_PYTHON)
def clones(session: nox.Session) -> None:
    """Snapshot a running service in a QEMU guest, restore clones, check that they diverge (root)."""
    session.install(".")
    session.run("python", "kernel/vm/clones.py", *session.posargs)


@nox.session(name="clones-sid", python=GUEST_PYTHON)
def clones_sid(session: nox.Session) -> None:
    """The clone test on the newest Debian generic kernel (root; makes the sid root)."""
    session.install(".")
    session.run("python", "kernel/vm/clones.py", "--kernel", "sid", *session.posargs)


def _bench(session: nox.Session, *, quick: bool, docs: bool) -> None:
    """The benchmarks on the simulator here, then on the kernel module in the guest, then the report."""
    session.install(".[test,bench]")
    python = session.run("python", "-c", "import sys; print(sys.executable)", silent=True)
    assert isinstance(python, str)
    out = "build/bench-smoke" if quick else "build/bench"
    extra = ["--quick"] if quick else []
    session.run("python", "benchmarks/run.py", "--backend", "sim-v8", "--out", out, *extra)
    session.run("python", "kernel/vm/run_guest.py", "--python", python.strip(), "--memory", "3072",
                "--out", f"{out}/guest", "--script", "benchmarks/run.py",
                "--", "--backend", "kernel-v8", "--place", "QEMU guest (TCG)", *extra)
    results = [f"{out}/sim-v8.json", f"{out}/guest/kernel-v8.json"]
    session.run("python", "benchmarks/report.py", *results, *(["--docs", "docs"] if docs else []))


@nox.session(python=GUEST_PYTHON)
def bench(session: nox.Session) -> None:
    """The benchmark suite, simulator and guest (root; ~10 minutes). ``-- --docs``: update the docs."""
    _bench(session, quick=False, docs="--docs" in session.posargs)


@nox.session(name="bench-smoke", python=GUEST_PYTHON)
def bench_smoke(session: nox.Session) -> None:
    """Every benchmark with tiny counts, simulator and guest: the suite still runs (figures mean nothing)."""
    _bench(session, quick=True, docs=False)


@nox.session(python=False)
def dkms(session: nox.Session) -> None:
    """DKMS builds, signs and installs the module for every kernel with headers, here and in
    the trixie root (that suite's own DKMS), then removes it (root). The sid root's DKMS builds
    it from the Debian package: the deb session."""
    session.run("bash", "kernel/dkms-check.sh", *session.posargs, external=True)
    # sid's DKMS builds the module from the Debian package, in the deb session
    session.run("python3", "kernel/vm/suites.py", "run", "trixie", "--", "bash", "/project/kernel/dkms-check.sh",
                *session.posargs, external=True)


@nox.session(python=GUEST_PYTHON)
def deb(session: nox.Session) -> None:
    """The Debian package (kernel/deb/): build sysgenid-dkms_<version>_all.deb, install it with
    apt in a root of the newest Debian suite (its DKMS builds the module for that suite's
    kernels), purge it again, then boot that suite's kernel and load the module the package
    built (root)."""
    deb = session.run("bash", "kernel/deb/build-deb.sh", "build/deb", external=True, silent=True)
    assert isinstance(deb, str)
    package = os.path.relpath(deb.strip().splitlines()[-1])
    shutil.rmtree("build/deb/modules", ignore_errors=True)
    session.run("python3", "kernel/vm/suites.py", "run", "sid", "--", "bash", "/project/kernel/deb/check-deb.sh",
                f"/project/{package}", "/project/build/deb/modules", external=True)
    release = session.run("python3", "kernel/vm/suites.py", "kernel", "sid", "cloud", external=True, silent=True)
    assert isinstance(release, str)
    kver = release.strip().splitlines()[-1].split()[0]
    _run_guest(session, "--kernel", "sid", "--module", f"build/deb/modules/{kver}/sysgenid.ko",
               "--", *(session.posargs or ["tests/test_kernel_module.py"]))


@nox.session(python=False)
def matrix(session: nox.Session) -> None:
    """The table of kernels and Pythons tested, from the guest and clone runs' reports;
    ``-- --docs`` puts it in docs/kernel-module.md."""
    docs = ["--docs", "docs/kernel-module.md"] if "--docs" in session.posargs else []
    session.run("python3", "kernel/vm/matrix.py", *docs, external=True)


@nox.session(python=GUEST_PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", "src", "tests", "examples", "benchmarks", "noxfile.py", "kernel/vm")


@nox.session(python=GUEST_PYTHON)
def typecheck(session: nox.Session) -> None:
    # mypy checks for 3.10 too, where the exceptiongroup backport is imported
    session.install("-e", ".[test,integrations,docs,bench]", "mypy>=1.10", "nox", "exceptiongroup>=1.2")
    session.run("mypy", "--strict")


@nox.session(python=GUEST_PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site in strict mode (any warning fails)."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(python=GUEST_PYTHON)
def package(session: nox.Session) -> None:
    """Build the sdist and the wheel from it, check both (twine, .ci/check_dist.py), then install
    the wheel into a fresh virtual environment outside the checkout and run the demo from it."""
    dist = os.path.abspath("build/dist")
    shutil.rmtree(dist, ignore_errors=True)
    session.install("build>=1.2", "twine>=5")
    session.run("python", "-m", "build", "--outdir", dist)  # the wheel is built from the sdist
    session.run("twine", "check", "--strict", *sorted(glob.glob(f"{dist}/*")))
    session.run("python", ".ci/check_dist.py", dist)
    (wheel,) = glob.glob(f"{dist}/*.whl")
    with tempfile.TemporaryDirectory(prefix="sysgenid-async-wheel-") as place:
        venv = os.path.join(place, "venv")
        session.run("python", "-m", "venv", venv)
        python = os.path.join(venv, "bin", "python")
        session.run(python, "-m", "pip", "install", "--quiet", wheel, external=True)
        with session.chdir(place):  # not the checkout: its src/ must not be what is imported
            session.run(python, "-c", "import sysgenid_async, sys; "
                        "assert sysgenid_async.__file__.startswith(sys.prefix), sysgenid_async.__file__",
                        external=True)
            session.run(os.path.join(venv, "bin", "sysgenid-async"), "demo", external=True)


@nox.session(python=GUEST_PYTHON)
def demo(session: nox.Session) -> None:
    """The end-to-end story on the simulator."""
    session.install(".")
    session.run("sysgenid-async", "demo")
