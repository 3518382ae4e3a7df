"""Backends and event loops for the suite.

On the host the device tests run against the simulator (v4 and v8). Inside the QEMU
guest (``nox -s kernel``) the same tests run against the kernel module, loaded once
per ABI: ``--device-backends=kernel --kernel-module=PATH --kernel-abis=v4,v8``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import pytest

from backends import Backend, KernelBackend, SimBackend, load_module, unload_module
from sysgenid_async.uapi import Abi

pytest_plugins = ["pytester"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sysgenid", "sysgenid device backends")
    group.addoption("--device-backends", default="sim", choices=["sim", "kernel"],
                    help="run the device tests on the simulator (default) or the kernel module")
    group.addoption("--kernel-module", help="the .ko to load for the kernel backends (inside the guest)")
    group.addoption("--kernel-abis", default="v4,v8", help="the ABIs the module is tested in")
    group.addoption("--kernel-no-abi-param", action="store_true",
                    help="the module takes no abi= parameter: load it as it is")


def _backend_names(config: pytest.Config) -> list[str]:
    if config.getoption("--device-backends") == "kernel":
        if not config.getoption("--kernel-module"):
            raise pytest.UsageError("--device-backends=kernel needs --kernel-module")
        return [f"kernel-{abi.strip()}" for abi in config.getoption("--kernel-abis").split(",")]
    return ["sim-v4", "sim-v8"]


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
        only_abi = item.get_closest_marker("only_abi")
        callspec = getattr(item, "callspec", None)
        if only_abi and callspec and not callspec.params["backend_name"].endswith(only_abi.args[0]):
            deselected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]


@pytest.fixture(scope="session")
def loaded_backend(backend_name: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """Session-wide set-up of one backend: for the kernel, the module loaded in that ABI."""
    kind, abi = backend_name.split("-")
    if kind == "kernel":
        module = request.config.getoption("--kernel-module")
        name = load_module(module, Abi(abi), abi_param=not request.config.getoption("--kernel-no-abi-param"))
        yield name
        unload_module(name)
    else:
        yield ""


@pytest.fixture
def backend(backend_name: str, loaded_backend: str) -> Iterator[Backend]:
    """The device for one test; afterwards, no file of it may be left open."""
    kind, abi_name = backend_name.split("-")
    abi = Abi(abi_name)
    if kind == "kernel":
        kernel = KernelBackend(abi, loaded_backend)
        yield kernel
        assert kernel.open_files() == 0, "the test left device files open"
    else:
        sim = SimBackend(abi)
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
