"""The distribution check that ``nox -s package`` runs (.ci/check_dist.py), on wheels made here."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from scripts import load_script

CHECK = Path(__file__).resolve().parent.parent / ".ci" / "check_dist.py"

ENTRY_POINTS = """[console_scripts]
sysgenid-async = sysgenid_async.cli:main

[pytest11]
sysgenid_async = sysgenid_async.testing.pytest_plugin
"""
PACKAGE_FILES = ["sysgenid_async/__init__.py", "sysgenid_async/cli/__init__.py", "sysgenid_async/restore/__init__.py",
                 "sysgenid_async/testing/pytest_plugin.py", "sysgenid_async/py.typed"]


@pytest.fixture(scope="module")
def check() -> ModuleType:
    return load_script("check_dist", CHECK)


def _dist(directory: Path, files: list[str], entry_points: str = ENTRY_POINTS) -> Path:
    with zipfile.ZipFile(directory / "sysgenid_async-0.1.0-py3-none-any.whl", "w") as wheel:
        for name in files:
            wheel.writestr(name, "")
        wheel.writestr("sysgenid_async-0.1.0.dist-info/entry_points.txt", entry_points)
    source = directory / "source"
    for name in ["pyproject.toml", "README.md", "src/sysgenid_async/__init__.py", "src/sysgenid_async/py.typed",
                 "kernel/sysgenid.c", "kernel/sysgenid-flavours.h"]:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text("")
    with tarfile.open(directory / "sysgenid_async-0.1.0.tar.gz", "w:gz") as sdist:
        sdist.add(source, arcname="sysgenid_async-0.1.0")
    return directory


def test_a_complete_wheel_passes(check: ModuleType, tmp_path: Path) -> None:
    assert check.main(str(_dist(tmp_path, PACKAGE_FILES))) == 0


@pytest.mark.parametrize(
    ("files", "entry_points", "problem"),
    [
        ([f for f in PACKAGE_FILES if not f.endswith("py.typed")], ENTRY_POINTS, "no py.typed"),
        ([*PACKAGE_FILES, "tests/conftest.py"], ENTRY_POINTS, "not part of the package: tests/conftest.py"),
        ([*PACKAGE_FILES, "kernel/vm/clones.py"], ENTRY_POINTS, "not part of the package: kernel/vm/clones.py"),
        (PACKAGE_FILES, ENTRY_POINTS.split("[pytest11]")[0], "no pytest11 entry point"),
        (PACKAGE_FILES, ENTRY_POINTS.replace("cli:main", "cli:run"), "no console script"),
    ],
)
def test_a_wheel_that_lacks_or_leaks_something_fails(
    check: ModuleType, tmp_path: Path, files: list[str], entry_points: str, problem: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert check.main(str(_dist(tmp_path, files, entry_points))) == 1
    assert problem in capsys.readouterr().out
