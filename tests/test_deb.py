"""The Debian package of the module (kernel/deb/build-deb.sh), built here and read back.

Installing it, DKMS building the module, and the guest loading that build are ``nox -s deb``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

KERNEL = Path(__file__).resolve().parent.parent / "kernel"
VERSION = next(line.split('"')[1] for line in (KERNEL / "dkms.conf").read_text().splitlines()
               if line.startswith("PACKAGE_VERSION="))

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb builds the package (Debian)")


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    built = subprocess.run(["bash", str(KERNEL / "deb" / "build-deb.sh"), str(out)], capture_output=True, text=True,
                           check=True, timeout=60)
    path = Path(built.stdout.strip())
    assert path == out / f"sysgenid-dkms_{VERSION}_all.deb" and path.is_file()
    return path


def _field(package: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(package), name], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_package_holds_the_source_the_rule_and_the_header(package: Path) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", str(package)], capture_output=True, text=True, check=True).stdout
    files = {line.split()[-1].removeprefix(".") for line in listing.splitlines() if not line.startswith("d")}
    source = f"/usr/src/sysgenid-{VERSION}"
    assert {f"{source}/sysgenid.c", f"{source}/sysgenid-flavours.h", f"{source}/Kbuild", f"{source}/dkms.conf",
            f"{source}/uapi/sysgenid.h", "/usr/lib/udev/rules.d/60-sysgenid.rules",
            "/usr/include/linux/sysgenid.h"} <= files
    assert all(line.split()[1] == "root/root" for line in listing.splitlines()), "owned by root"
    assert not any("/vm/" in name or name.endswith(".py") for name in files), "no harness in the package"


def test_the_package_asks_dkms_to_build_for_every_kernel_with_headers(package: Path, tmp_path: Path) -> None:
    assert (_field(package, "Package"), _field(package, "Version"), _field(package, "Architecture")) == (
        "sysgenid-dkms", VERSION, "all")
    assert _field(package, "Depends").startswith("dkms")
    subprocess.run(["dpkg-deb", "-e", str(package), str(tmp_path / "control")], check=True)
    postinst = (tmp_path / "control" / "postinst").read_text()
    assert f"dkms install -m sysgenid -v {VERSION} -k" in postinst and "/lib/modules/*/build" in postinst
    prerm = (tmp_path / "control" / "prerm").read_text()
    assert f"dkms remove -m sysgenid -v {VERSION} --all" in prerm
    for script in ("postinst", "prerm"):
        assert (tmp_path / "control" / script).stat().st_mode & 0o111, f"{script} is executable"
        assert subprocess.run(["sh", "-n", str(tmp_path / "control" / script)]).returncode == 0
