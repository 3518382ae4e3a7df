"""The ioctl numbers match the C macros of <linux/ioctl.h>, compiled by gcc."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sysgenid_async import uapi

KERNEL = Path(__file__).resolve().parent.parent / "kernel"
UAPI = KERNEL / "uapi"


def test_ioctl_numbers_match_the_c_macros(tmp_path: Path) -> None:
    compiler = shutil.which("gcc") or shutil.which("cc")
    assert compiler, "a C compiler is needed to check the ioctl numbers"
    names = list(uapi.IOCTL_NUMBERS)
    program = tmp_path / "numbers.c"
    program.write_text(
        # the project's userspace header, included as a C program would after install-header;
        # it brings <linux/ioctl.h> itself, and the module is built from it
        "#include <stdio.h>\n#include <sysgenid.h>\n"
        "_Static_assert(sizeof(sysgenid_generation_t) == 4, \"the generation is a u32\");\n"
        "int main(void) {\n"
        + "".join(f'    printf("%s %lu\\n", "{name}", (unsigned long){name});\n' for name in names)
        + "    printf(\"_IO_2d_1 %lu\\n\", (unsigned long)_IO(0x2d, 1));\n"
        + "    return 0;\n}\n"
    )
    binary = tmp_path / "numbers"
    subprocess.run([compiler, "-std=c11", "-pedantic", "-Wall", "-Wextra", "-Werror", f"-I{UAPI}", "-o", str(binary),
                    str(program)], check=True)
    output = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    from_c = {name: int(value) for name, value in (line.split() for line in output.splitlines())}
    assert from_c.pop("_IO_2d_1") == uapi._IO(0x2D, 1)
    assert from_c == uapi.IOCTL_NUMBERS


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # _IO carries no size and no direction: (type << 8) | nr
        ("SYSGENID_GET_OUTDATED_WATCHERS", 0x2D01),
        ("SYSGENID_V8_TRIGGER_GEN_UPDATE", 0xE403),
    ],
)
def test_io_encoding(name: str, expected: int) -> None:
    assert uapi.IOCTL_NUMBERS[name] == expected


def test_the_abi_enum_names_each_request() -> None:
    assert uapi.Abi.V4.wait_watchers_request == uapi.SYSGENID_WAIT_WATCHERS
    assert uapi.Abi.V8.wait_watchers_request == uapi.SYSGENID_V8_WAIT_WATCHERS
    assert uapi.Abi.V4.trigger_request == uapi.SYSGENID_FORCE_GEN_UPDATE
    assert uapi.Abi.V8.trigger_request == uapi.SYSGENID_V8_TRIGGER_GEN_UPDATE
    assert uapi.Abi.V4.every_fd_is_a_watcher and not uapi.Abi.V8.every_fd_is_a_watcher


def test_install_header_puts_the_userspace_abi_where_c_programs_find_it(tmp_path: Path) -> None:
    assert shutil.which("make"), "make is needed to check the header's install target"
    subprocess.run(["make", "-s", "-C", str(KERNEL), "install-header", f"DESTDIR={tmp_path}", "PREFIX=/usr"],
                   check=True)
    installed = tmp_path / "usr" / "include" / "sysgenid.h"
    assert installed.read_text() == (UAPI / "sysgenid.h").read_text()
    assert "__KERNEL__" not in installed.read_text()  # nothing kernel-only in what users include
