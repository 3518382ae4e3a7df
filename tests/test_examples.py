"""Every example runs as it is: on the simulator on the host, on the kernel device in the guest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from backends import Backend

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


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
