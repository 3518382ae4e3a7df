"""Every bad input gets its typed answer and changes nothing (cases: tests/bad_inputs.py).

Runs on every backend; the cases that need an unprivileged caller run in the guest (as
root everything is permitted). Nothing may change: not the generation, not the number
of open device files, not this process's descriptors.
"""

from __future__ import annotations

import operator
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _pytest.mark.structures import ParameterSet

import sysgenid_async
import sysgenid_async.device
from backends import Backend, _setpriv
from bad_inputs import CASES, Case, Context, Raised, generated_part, render
from sysgenid_async import BlockingSysGenID

DOCS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "bad-input.md"

RAISE_AS_NOBODY = """
import operator, sys
import sysgenid_async, sysgenid_async.device
try:
    operator.attrgetter(sys.argv[1])(sysgenid_async)(sys.argv[2])
except Exception as error:
    print(type(error).__name__)
else:
    print("no error")
"""


def _as_nobody(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_setpriv(frozenset()), sys.executable, *args], capture_output=True, text=True, check=False, timeout=120,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
    )


@pytest.fixture
def context(backend: Backend) -> Iterator[Context]:
    base = Path(tempfile.mkdtemp(prefix="sysgenid-bad-input-"))
    base.chmod(0o755)  # nobody may look inside, not open the forbidden file
    (base / "file").write_text("not a device\n")
    (base / "dir").mkdir()
    (base / "dir").chmod(0o755)  # also a registry directory open to others
    forbidden = base / "forbidden"
    forbidden.write_text("")
    forbidden.chmod(0o600)
    device = BlockingSysGenID.open(backend.path)
    try:
        yield Context(
            path=backend.path, abi=backend.abi, device=device, regular_file=str(base / "file"),
            directory=str(base / "dir"), missing=str(base / "missing"), forbidden=str(forbidden),
            run_unprivileged=lambda args: _as_nobody(["-m", "sysgenid_async", *args]),
            raise_unprivileged=lambda name, path: _as_nobody(["-c", RAISE_AS_NOBODY, name, path]).stdout.strip(),
        )
    finally:
        device.close()
        shutil.rmtree(base)


def _params() -> list[ParameterSet]:
    params = []
    for case in CASES:
        marks = [pytest.mark.kernel_only] if case.unprivileged else []
        if case.only_abi is not None:
            marks.append(pytest.mark.only_abi(case.only_abi.value))
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


def _state(backend: Backend) -> tuple[int, int, int]:
    return backend.generation, backend.open_files(), len(os.listdir("/proc/self/fd"))


@pytest.mark.once_per_abi  # refused before any quirk could matter: not rerun per flavour
@pytest.mark.parametrize("case", _params())
def test_a_bad_input_gets_its_answer_and_changes_nothing(
    backend: Backend, context: Context, case: Case, capsys: pytest.CaptureFixture[str],
) -> None:
    before = _state(backend)
    capsys.readouterr()
    if isinstance(case.answer, int):
        outcome = case.call(context)
        status: object
        if isinstance(outcome, subprocess.CompletedProcess):
            status, stderr = outcome.returncode, outcome.stderr
        else:
            status, stderr = outcome, capsys.readouterr().err
        assert status == case.answer, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sysgenid-async"), f"one line, naming the program: {stderr!r}"
    else:
        raised: Exception | None = None
        try:
            outcome = case.call(context)
        except Exception as error:
            raised = error
        if raised is not None:
            assert isinstance(raised, case.answer), f"{type(raised).__name__}: {raised}"
            message = str(raised)
            assert message and "\n" not in message, "a one-line message"
        else:
            assert isinstance(outcome, Raised), f"no error; returned {outcome!r}"
            assert outcome == case.answer.__name__
    assert _state(backend) == before, "the bad input changed something"


def test_every_entry_point_in_the_table_exists() -> None:
    for name in ("device.Device.open", "AsyncSysGenID.open", "BlockingSysGenID.open", "watch"):
        assert callable(operator.attrgetter(name)(sysgenid_async))


def test_the_docs_table_is_generated_from_the_cases() -> None:
    assert generated_part(DOCS_PAGE) == render(), (
        "docs/bad-input.md is stale: python tests/bad_inputs.py --write docs/bad-input.md"
    )
