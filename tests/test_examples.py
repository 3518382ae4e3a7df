"""Every example runs, on the simulator, and tells its story."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("watch_service.py", "generation 2: reseeded"),
        ("orchestrator.py", "orchestrator: caught-up, resuming"),
        ("cached_secret.py", "(changed)"),
        ("blocking_thread.py", "thread: generation 1"),
    ],
)
def test_example(script: str, expected: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--simulate"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout
