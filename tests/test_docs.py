"""Every Python snippet in the README and docs/ runs, on the simulator, so none can rot.

Each runs as docs/simulator.md tells a reader to run one (the command is read from that page):
it must finish cleanly, or (a service's endless loop) still be running after a while, having
printed. A snippet that defines tests runs under pytest (with the package's plugin).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SNIPPET = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
DOCUMENTED_RUN = re.compile(r"^(sysgenid-async simulate .*snippet\.py)$", re.MULTILINE)


def documented_command(snippet: Path) -> list[str]:
    """The command docs/simulator.md gives, for ``snippet`` (the program run as this Python's module)."""
    found = DOCUMENTED_RUN.findall((ROOT / "docs" / "simulator.md").read_text())
    assert len(found) == 1, "docs/simulator.md no longer shows one 'sysgenid-async simulate ... snippet.py'"
    words = shlex.split(found[0])
    return [sys.executable, "-m", "sysgenid_async", *words[1:-1], str(snippet)]


#: Snippets using the client integrations need their extra: tests/integrations runs them.
NEEDS_INTEGRATIONS = "sysgenid_async.integrations"


def snippets(*, integrations: bool = False) -> list[pytest.ParameterSet]:
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = page.read_text()
        for match in SNIPPET.finditer(text):
            if (NEEDS_INTEGRATIONS in match.group(1)) != integrations:
                continue
            line = text[: match.start()].count("\n") + 1
            found.append(pytest.param(match.group(1), id=f"{page.relative_to(ROOT)}:{line}"))
    assert len(found) >= (1 if integrations else 10), "the snippet pattern no longer finds the docs' snippets"
    return found


@pytest.mark.parametrize("source", snippets())
def test_snippet(source: str, tmp_path: Path) -> None:
    run_snippet(source, tmp_path)


def run_snippet(source: str, tmp_path: Path) -> None:
    if "def test_" in source:
        path = tmp_path / "test_snippet.py"
        path.write_text(source)
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:asyncio", "-W", "error",
             str(path)],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert " passed" in done.stdout and "failed" not in done.stdout
        return
    path = tmp_path / "snippet.py"
    path.write_text(source)
    process = subprocess.Popen(documented_command(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=8)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        assert "Traceback" not in err, err
        assert out.strip(), "a snippet that runs for ever must at least say what it does"
        return
    assert process.returncode == 0, out + err
    assert "Traceback" not in err, err


SHELL_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)


def simulator_page_commands() -> list[str]:
    """The command lines docs/simulator.md shows that run the package's own module on the simulator."""
    text = (ROOT / "docs" / "simulator.md").read_text()
    found = [line for block in SHELL_BLOCK.findall(text) for line in block.splitlines()
             if line.startswith("sysgenid-async simulate -m ")]
    assert found, "docs/simulator.md no longer shows 'sysgenid-async simulate -m ...'"
    return found


@pytest.mark.parametrize("command", simulator_page_commands())
def test_the_simulator_pages_commands_run_as_written(command: str) -> None:
    words = shlex.split(command)
    done = subprocess.run([sys.executable, "-m", "sysgenid_async", *words[1:]], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip(), "each prints what it found"
