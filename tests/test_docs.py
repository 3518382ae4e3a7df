"""Every Python snippet in the README and docs/ runs, on the simulator, so none can rot.

A snippet that defines tests runs under pytest (with the package's plugin). Any other runs as
a program while a simulated device at the default path sees a restore every 50 ms: it must
finish cleanly, or (a service's endless loop) still be running after a while, having printed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SNIPPET = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
PRELUDE = """
import sys, threading
from sysgenid_async.testing import SimulatedDevice
simulator = SimulatedDevice()
installation = simulator.installed()  # kept: dropping the context manager would uninstall it
installation.__enter__()
stop = threading.Event()
def restores():
    while not stop.wait(0.05):
        simulator.bump()
threading.Thread(target=restores, daemon=True).start()
source = open(sys.argv[1]).read()
exec(compile(source, sys.argv[1], "exec"), {"__name__": "__main__"})
stop.set()
"""


def snippets() -> list[pytest.ParameterSet]:
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = page.read_text()
        for match in SNIPPET.finditer(text):
            line = text[: match.start()].count("\n") + 1
            found.append(pytest.param(match.group(1), id=f"{page.relative_to(ROOT)}:{line}"))
    assert len(found) >= 10, "the snippet pattern no longer finds the docs' snippets"
    return found


@pytest.mark.parametrize("source", snippets())
def test_snippet(source: str, tmp_path: Path) -> None:
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
    process = subprocess.Popen(
        [sys.executable, "-c", PRELUDE, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
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
