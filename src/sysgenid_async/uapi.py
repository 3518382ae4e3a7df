"""The /dev/sysgenid user-space ABI: ioctl numbers and fixed sizes, for both ABIs.

The numbers are computed with the kernel's ``_IOC`` encoding (``<asm-generic/ioctl.h>``)
rather than typed in, and a test checks them against the C macros.
"""

from __future__ import annotations

import enum
import mmap
from typing import Final

# <asm-generic/ioctl.h>: nr in bits 0-7, type in 8-15, size in 16-29, direction in 30-31.
_IOC_NRBITS: Final = 8
_IOC_TYPEBITS: Final = 8
_IOC_SIZEBITS: Final = 14
_IOC_NRSHIFT: Final = 0
_IOC_TYPESHIFT: Final = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT: Final = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT: Final = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE: Final = 0


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:  # noqa: N802 - kernel name
    return (
        (direction << _IOC_DIRSHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _IO(type_: int, nr: int) -> int:  # noqa: N802 - kernel name
    return _IOC(_IOC_NONE, type_, nr, 0)


DEFAULT_DEVICE_PATH: Final = "/dev/sysgenid"
DEVICE_ENV_VAR: Final = "SYSGENID_DEVICE"

#: The counter is a native-endian u32, read and acknowledged 4 bytes at a time.
GENERATION_SIZE: Final = 4
GENERATION_MAX: Final = 2**32 - 1
#: The mmap fast probe is one page at offset 0; the generation is its first u32.
PAGE_SIZE: Final = mmap.PAGESIZE

#: Either capability allows a forced generation change (both ABIs), in the initial user namespace.
TRIGGER_CAPABILITIES: Final = frozenset({"CAP_CHECKPOINT_RESTORE", "CAP_SYS_ADMIN"})

# v4, the documented ABI (the LKML patch of January 2021).
SYSGENID_IOCTL: Final = 0x2D
SYSGENID_GET_OUTDATED_WATCHERS: Final = _IO(SYSGENID_IOCTL, 1)
SYSGENID_WAIT_WATCHERS: Final = _IO(SYSGENID_IOCTL, 2)
SYSGENID_FORCE_GEN_UPDATE: Final = _IO(SYSGENID_IOCTL, 3)

# v8, the shipped ABI (Amazon Linux microVM kernels, Firecracker guests).
SYSGENID_V8_IOCTL: Final = 0xE4
SYSGENID_V8_SET_WATCHER_TRACKING: Final = _IO(SYSGENID_V8_IOCTL, 1)
SYSGENID_V8_WAIT_WATCHERS: Final = _IO(SYSGENID_V8_IOCTL, 2)
SYSGENID_V8_TRIGGER_GEN_UPDATE: Final = _IO(SYSGENID_V8_IOCTL, 3)


class Abi(str, enum.Enum):
    """Which personality of the device a handle speaks."""

    V4 = "v4"
    V8 = "v8"

    @property
    def wait_watchers_request(self) -> int:
        return SYSGENID_WAIT_WATCHERS if self is Abi.V4 else SYSGENID_V8_WAIT_WATCHERS

    @property
    def trigger_request(self) -> int:
        return SYSGENID_FORCE_GEN_UPDATE if self is Abi.V4 else SYSGENID_V8_TRIGGER_GEN_UPDATE

    @property
    def every_fd_is_a_watcher(self) -> bool:
        """v4 counts every open file; v8 only files that opted in to tracking."""
        return self is Abi.V4


#: Every ioctl number by its uapi name, for tests and ``selftest``.
IOCTL_NUMBERS: Final[dict[str, int]] = {
    "SYSGENID_GET_OUTDATED_WATCHERS": SYSGENID_GET_OUTDATED_WATCHERS,
    "SYSGENID_WAIT_WATCHERS": SYSGENID_WAIT_WATCHERS,
    "SYSGENID_FORCE_GEN_UPDATE": SYSGENID_FORCE_GEN_UPDATE,
    "SYSGENID_V8_SET_WATCHER_TRACKING": SYSGENID_V8_SET_WATCHER_TRACKING,
    "SYSGENID_V8_WAIT_WATCHERS": SYSGENID_V8_WAIT_WATCHERS,
    "SYSGENID_V8_TRIGGER_GEN_UPDATE": SYSGENID_V8_TRIGGER_GEN_UPDATE,
}
