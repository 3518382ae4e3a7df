"""Backends and event loops for the suite.

On the host the device tests run against the simulator (v4, v8, and the flavours that
behave as the shipped drivers). Inside the QEMU guest (``nox -s kernel``) the same tests
run against the kernel module, loaded once per ABI and flavour:
``--device-backends=kernel --kernel-module=PATH --kernel-abis=v4,v8 --kernel-flavours=amazon-linux``.

What is ABI and what is the project's own choice: a test of a stricter choice of our
module (``stricter_choice``) is skipped on a foreign module; a test that a named driver's
quirk breaks (``breaks_on``) is an expected failure there, strict; a test of a quirk itself
(``with_quirk``) runs only where the driver has it. Tests of the library's own resource
hygiene and others no quirk can change (``once_per_abi``: the leak cycles, the examples,
bad input) do not run again on each flavour.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backends import Backend, BackendSpec, KernelBackend, SimBackend, is_our_module, load_module, unload_module
from sysgenid_async.testing import Flavour, Quirk, isolated_state

pytest_plugins = ["pytester"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sysgenid", "sysgenid device backends")
    group.addoption("--device-backends", default="sim", choices=["sim", "kernel"],
                    help="run the device tests on the simulator (default) or the kernel module")
    group.addoption("--kernel-module", help="the .ko to load for the kernel backends (inside the guest)")
    group.addoption("--kernel-abis", default="v4,v8", help="the ABIs the module is tested in")
    group.addoption("--kernel-flavours", default="",
                    help="also test our module in these flavours (comma-separated: amazon-linux, v4-patch)")
    group.addoption("--kernel-driver", choices=["amazon-linux", "v4-patch", "unknown"],
                    help="a module that is not ours: which shipped driver it is (default: unknown)")
    group.addoption("--sim-flavours", default="amazon-linux,v4-patch",
                    help="simulator flavours tested besides sim-v4 and sim-v8 (comma-separated; '' for none)")
    group.addoption("--kernel-no-abi-param", action="store_true",
                    help="the module takes no abi= parameter: load it as it is")
    parser.getgroup("integrations", "client integrations").addoption(
        "--integrations", action="store_true",
        help="run tests/integrations: the client libraries (the 'integrations' extra) against real "
             "PostgreSQL and Redis servers started on loopback (nox -s integrations); not collected otherwise")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """tests/integrations needs its extra and the servers: collected only when asked for."""
    if collection_path.name == "integrations" and collection_path.parent == Path(__file__).parent:
        return not config.getoption("--integrations")
    return None


def _listed(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _foreign_driver(config: pytest.Config) -> str | None:
    """For a kernel module that is not ours, the driver it is said to be; None for ours."""
    cached: str | None = getattr(config, "_sysgenid_foreign_driver", "")
    if cached != "":
        return cached
    module = config.getoption("--kernel-module")
    named = config.getoption("--kernel-driver")
    driver = None if module is None or (named is None and is_our_module(module)) else (named or "unknown")
    config._sysgenid_foreign_driver = driver  # type: ignore[attr-defined]
    return driver


def backend_spec(config: pytest.Config, name: str) -> BackendSpec:
    foreign = _foreign_driver(config) if name.startswith("kernel-") else None
    return BackendSpec.parse(name, foreign_driver=foreign)


def _backend_names(config: pytest.Config) -> list[str]:
    if config.getoption("--device-backends") == "kernel":
        module = config.getoption("--kernel-module")
        if not module:
            raise pytest.UsageError("--device-backends=kernel needs --kernel-module")
        names = [f"kernel-{abi}" for abi in _listed(config.getoption("--kernel-abis"))]
        flavours = _listed(config.getoption("--kernel-flavours"))
        if flavours and _foreign_driver(config) is not None:
            raise pytest.UsageError("--kernel-flavours: the module is not ours (it has no flavour= parameter)")
        return names + [f"kernel-{Flavour(flavour).value}" for flavour in flavours]
    return ["sim-v4", "sim-v8"] + [f"sim-{Flavour(flavour).value}" for flavour in _listed(
        config.getoption("--sim-flavours"))]


def _mark_for_driver(item: pytest.Item, spec: BackendSpec) -> bool:
    """Skip, expect to fail, or (False) deselect ``item`` as the driver behind ``spec`` asks."""
    only_abi = item.get_closest_marker("only_abi")
    if only_abi and spec.abi.value != only_abi.args[0]:
        return False
    if item.get_closest_marker("once_per_abi") and spec.flavour not in (None, Flavour.SYSGENID_ASYNC):
        return False
    needed = item.get_closest_marker("with_quirk")
    if needed and not set(needed.args) <= spec.quirks:
        return False
    stricter = item.get_closest_marker("stricter_choice")
    if stricter and spec.foreign:
        item.add_marker(pytest.mark.skip(reason=f"a choice of our module, not ABI: {stricter.args[0]}"))
    for mark in item.iter_markers("breaks_on"):
        quirk: Quirk = mark.args[0]
        if quirk in spec.quirks:
            driver = spec.flavour.value if spec.flavour else "this driver"
            item.add_marker(pytest.mark.xfail(strict=True, reason=f"{driver}: {quirk.description}"))
    return True


@pytest.fixture(autouse=True, scope="session")
def private_watcher_registry() -> Iterator[str]:
    """Every restore watcher of the suite (and of its subprocesses) announces itself in a
    directory of this run, never in the machine's /run/sysgenid-async."""
    directory = tempfile.mkdtemp(prefix="sga-", dir="/tmp")  # short: unix socket paths are limited
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SYSGENID_ASYNC_RUNTIME_DIR", directory)
        yield directory
    shutil.rmtree(directory, ignore_errors=True)


def pytest_sessionstart(session: pytest.Session) -> None:
    """In a guest run, record where the suite ran: the kernel/vm/matrix.py table reads it."""
    directory = os.environ.get("SYSGENID_REPORT_DIR")
    if not directory:
        return
    userland = "unknown"
    try:
        with open("/etc/os-release") as release:
            for line in release:
                if line.startswith("PRETTY_NAME="):
                    userland = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    environment = {"python": platform.python_version(), "kernel": os.uname().release, "userland": userland}
    with open(os.path.join(directory, "environment.json"), "w") as out:
        json.dump(environment, out)


@pytest.fixture
def default_device(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    """The backend as the default device (and so the shared probe), with the library's
    process-wide state fresh."""
    monkeypatch.setenv("SYSGENID_DEVICE", backend.path)
    with isolated_state():
        yield backend


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_name" in metafunc.fixturenames:
        metafunc.parametrize("backend_name", _backend_names(metafunc.config), scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kernel = config.getoption("--device-backends") == "kernel"
    deselected = []
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "backend_name" in fixtures:
            item.add_marker(pytest.mark.device)
        # Tests that do not apply here are deselected, not skipped: kernel_only ones off the
        # guest, and only_abi ones on the other ABI.
        if item.get_closest_marker("kernel_only") and not kernel:
            deselected.append(item)
        if item.get_closest_marker("needs_abi_param") and config.getoption("--kernel-no-abi-param"):
            deselected.append(item)
        callspec = getattr(item, "callspec", None)
        if callspec and "backend_name" in callspec.params:
            if not _mark_for_driver(item, backend_spec(config, callspec.params["backend_name"])):
                deselected.append(item)
        elif item.get_closest_marker("only_abi") or item.get_closest_marker("with_quirk"):
            raise pytest.UsageError(f"{item.nodeid}: only_abi and with_quirk need the backend fixture")
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]


@pytest.fixture(scope="session")
def loaded_backend(backend_name: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """Session-wide set-up of one backend: for the kernel, the module loaded in that ABI."""
    spec = backend_spec(request.config, backend_name)
    if spec.kind == "kernel":
        module = request.config.getoption("--kernel-module")
        name = load_module(module, spec, abi_param=not request.config.getoption("--kernel-no-abi-param"))
        yield name
        unload_module(name)
    else:
        yield ""


@pytest.fixture
def backend(backend_name: str, loaded_backend: str, request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The device for one test; afterwards, no file of it may be left open."""
    spec = backend_spec(request.config, backend_name)
    if spec.kind == "kernel":
        kernel = KernelBackend(spec, loaded_backend)
        yield kernel
        assert kernel.open_files() == 0, "the test left device files open"
    else:
        sim = SimBackend(spec)
        with sim.sim.installed(sim.path, set_env=False):
            yield sim
        assert sim.open_files() == 0, "the test left device files open"


@pytest.fixture
def report_figures(request: pytest.FixtureRequest) -> Callable[[dict[str, object]], None]:
    """Report a test's figures: printed, and appended to $SYSGENID_REPORT_DIR/figures.jsonl
    (the guest harness sets it to its report directory)."""

    def report(figures: dict[str, object]) -> None:
        line = json.dumps({"test": request.node.nodeid, **figures})
        print(line)
        directory = os.environ.get("SYSGENID_REPORT_DIR")
        if directory:
            with open(os.path.join(directory, "figures.jsonl"), "a") as out:
                out.write(line + "\n")

    return report


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param  # type: ignore[no-any-return]
