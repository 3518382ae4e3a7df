"""Every example runs as it is: on the simulator on the host, on the kernel device in the guest."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from backends import Backend

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.once_per_abi  # the examples use no driver quirk: not rerun per flavour
@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("watchdog.py", "generation {second}: reseeded"),
        ("trio_watchdog.py", "trio: generation {first}: instance"),
        ("secrets_cache.py", "(changed)"),
        ("event_loop_service.py", "identity renewed"),
        ("orchestrator.py", "orchestrator: caught-up"),
        ("connection_pool.py", "client reopened 1 time(s)"),
        ("asgi_lifespan.py", "after: "),
        ("blocking_thread.py", "thread: generation {first}"),
    ],
)
def test_example(backend: Backend, script: str, expected: str) -> None:
    # the simulator lives in the example's own process; the kernel device is shared
    mode = ["--trigger"] if backend.kernel else ["--simulate", "--abi", backend.abi.value]
    first = (backend.generation + 1) % 2**32 if backend.kernel else 1
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *mode], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert expected.format(first=first, second=(first + 1) % 2**32) in done.stdout, done.stdout
    assert "UNCHANGED" not in done.stdout


def test_a_two_file_example_runs_under_simulate(tmp_path: Path) -> None:
    """``sysgenid-async simulate examples/watchdog.py`` imports the example's own ``_restores``
    from beside it, as ``python3 examples/watchdog.py`` does, from any working directory. With
    ``--trigger`` the example forces its two restores on the (simulated) device and exits."""
    done = subprocess.run(
        [sys.executable, "-m", "sysgenid_async", "simulate", "--restore-every", "3600",
         str(EXAMPLES / "watchdog.py"), "--trigger"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "generation 2: reseeded" in done.stdout, done.stdout


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\[<>=;! ]", requirement, maxsplit=1)[0].lower()


def test_what_the_examples_import_is_installed_by_the_examples_extra() -> None:
    """Beyond the standard library, the package and its own dependencies, an example imports
    only what ``pip install 'sysgenid-async[examples]'`` brings (the installed metadata says)."""
    from importlib.metadata import requires

    installed = {
        _requirement_name(requirement) for requirement in requires("sysgenid-async") or []
        if "extra ==" not in requirement or re.search(r"extra == ['\"]examples['\"]", requirement)
    }
    local = {path.stem for path in EXAMPLES.glob("*.py")}
    needed: set[str] = set()
    for example in EXAMPLES.glob("*.py"):
        for node in ast.walk(ast.parse(example.read_text())):
            if isinstance(node, ast.Import):
                needed |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                needed.add(node.module.split(".")[0])
    foreign = needed - set(sys.stdlib_module_names) - local - {"sysgenid_async", "__future__"}
    assert foreign <= installed, f"examples import {sorted(foreign - installed)}, which no extra installs"
    assert {"trio", "httpx"} <= foreign, "the check sees the examples' own imports"
