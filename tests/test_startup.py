"""Start-up imports only what it uses: ``import sysgenid_async`` nothing but the package, the
command line's ``--help`` and the device's commands neither the restore layer nor anyio.
(How long start-up takes is the footprint benchmark's business; this is what it loads.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Run in a fresh interpreter: prints the package's modules loaded, and whether anyio is.
PROBE = """
import json, sys
{statement}
print(json.dumps({{"package": sorted(m for m in sys.modules if m.startswith("sysgenid_async")),
                  "anyio": "anyio" in sys.modules, "asyncio": "asyncio" in sys.modules}}))
"""


def _loaded(statement: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(statement=statement)],
                          capture_output=True, text=True, check=True, timeout=60)
    loaded: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return loaded


def test_import_sysgenid_async_loads_the_package_alone() -> None:
    assert _loaded("import sysgenid_async") == {
        "package": ["sysgenid_async", "sysgenid_async._version"], "anyio": False, "asyncio": False,
    }


def test_a_public_name_loads_its_own_layers_only() -> None:
    loaded = _loaded("from sysgenid_async import watch")
    assert not any(name.startswith("sysgenid_async.restore") for name in loaded["package"])  # type: ignore[attr-defined]
    assert "sysgenid_async.changes" in loaded["package"]  # type: ignore[operator]


@pytest.mark.parametrize(
    "arguments",
    [["--help"], ["--version"], ["--device", "/nonexistent/sysgenid", "status"],
     ["--device", "/nonexistent/sysgenid", "trigger"]],
)
def test_the_command_line_loads_no_restore_layer_and_no_anyio(arguments: list[str]) -> None:
    statement = (
        "import contextlib, io\n"
        "from sysgenid_async.cli import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        f"    cli(*{arguments!r})"
    )
    loaded = _loaded(statement)
    assert not any(name.startswith("sysgenid_async.restore") for name in loaded["package"]), loaded  # type: ignore[attr-defined]
    assert loaded["anyio"] is False and loaded["asyncio"] is False, loaded
