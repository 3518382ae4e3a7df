"""Check the built distributions (``nox -s package``): what a user installs from an index.

    python3 .ci/check_dist.py build/dist

The wheel must hold the package with its ``py.typed`` marker, the console script and the
pytest plugin's entry point, and nothing from ``tests/``, ``kernel/`` or ``benchmarks/``; the
sdist must hold what the wheel is built from. Exits 1 with one line per problem.
Standard library only.
"""

from __future__ import annotations

import configparser
import sys
import tarfile
import zipfile
from pathlib import Path

PACKAGE = "sysgenid_async"


def check_wheel(path: Path) -> list[str]:
    problems: list[str] = []
    with zipfile.ZipFile(path) as wheel:
        names = wheel.namelist()
        info = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
        entry_points = configparser.ConfigParser()
        if info is None:
            problems.append("no entry_points.txt")
        else:
            entry_points.read_string(wheel.read(info).decode())
    if f"{PACKAGE}/py.typed" not in names:
        problems.append("no py.typed: type checkers would ignore the package's annotations")
    for required in (f"{PACKAGE}/__init__.py", f"{PACKAGE}/cli/__init__.py", f"{PACKAGE}/restore/__init__.py",
                     f"{PACKAGE}/testing/pytest_plugin.py"):
        if required not in names:
            problems.append(f"missing {required}")
    strays = [n for n in names if not (n.startswith(f"{PACKAGE}/") or ".dist-info/" in n)]
    problems += [f"not part of the package: {n}" for n in strays]
    if entry_points.get("console_scripts", "sysgenid-async", fallback=None) != "sysgenid_async.cli:main":
        problems.append("no console script sysgenid-async = sysgenid_async.cli:main")
    if entry_points.get("pytest11", "sysgenid_async", fallback=None) != "sysgenid_async.testing.pytest_plugin":
        problems.append("no pytest11 entry point for the plugin")
    return problems


def check_sdist(path: Path) -> list[str]:
    with tarfile.open(path) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    needed = ["pyproject.toml", "README.md", f"src/{PACKAGE}/__init__.py", f"src/{PACKAGE}/py.typed",
              "kernel/sysgenid.c", "kernel/sysgenid-flavours.h"]
    return [f"sdist: missing {name}" for name in needed if name not in names]


def main(directory: str) -> int:
    dist = Path(directory)
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        print(f"check_dist: expected one wheel and one sdist in {dist}, found {wheels + sdists}")
        return 1
    problems = check_wheel(wheels[0]) + check_sdist(sdists[0])
    for problem in problems:
        print(f"check_dist: {problem}")
    if not problems:
        print(f"check_dist: {wheels[0].name} and {sdists[0].name} hold what they should")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build/dist"))
