"""The syscall boundary: one open file of a sysgenid device, as raw operations.

A :class:`RawFile` does exactly what the device does, raising ``OSError`` with the
device's errno; it interprets nothing. :class:`KernelFile` is a real file descriptor;
the simulator in :mod:`sysgenid_async.testing` provides the same interface in-process,
and :func:`open_raw` picks the simulator for paths it was installed at.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import threading
from collections.abc import Callable
from typing import Protocol

from .uapi import PAGE_SIZE

__all__ = ["KernelFile", "RawFile", "install_opener", "opened_in_process", "open_raw", "remove_opener"]


class RawFile(Protocol):
    """The operations of one open file of the device."""

    def fileno(self) -> int:
        """A pollable descriptor: readable while this file has not acknowledged."""

    def read(self, size: int) -> bytes: ...

    def write(self, data: bytes) -> int: ...

    def ioctl(self, request: int, arg: int) -> int:
        """Issue ``request`` with an unsigned integer argument; returns the result."""

    def map_page(
        self, length: int = PAGE_SIZE, *, writable: bool = False, shared: bool = True, offset: int = 0
    ) -> memoryview:
        """Map the generation page; returns a view of it (read-only unless ``writable``)."""

    def is_character_device(self) -> bool: ...

    def close(self) -> None: ...


def _load_libc_ioctl() -> Callable[[int, int, int], int]:
    import ctypes  # on the first ioctl, not at import: ctypes costs more than the rest of the fd layer

    # ctypes, not fcntl.ioctl: Python 3.14's fcntl.ioctl retries EINTR (gh-132742), which
    # WAIT_WATCHERS uses as a result, and fcntl.ioctl parses the argument as a C int, which
    # cannot carry a minimum generation of 2**31 or more. ctypes releases the GIL.
    libc = ctypes.CDLL(None, use_errno=True)  # the C library already loaded: no ctypes.util (slow to import)
    func = libc.ioctl
    func.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
    func.restype = ctypes.c_int

    def call(fd: int, request: int, arg: int) -> int:
        result: int = func(fd, request, arg)
        if result == -1:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return result

    return call


_libc_ioctl: Callable[[int, int, int], int] | None = None


class KernelFile:
    """An open file of a real device node."""

    __slots__ = ("_fd", "_maps")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._maps: list[mmap.mmap] = []

    @classmethod
    def open(cls, path: str, *, readonly: bool = False, nonblock: bool = True) -> KernelFile:
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
        if nonblock:
            flags |= os.O_NONBLOCK
        return cls(os.open(path, flags))

    def fileno(self) -> int:
        return self._fd

    def read(self, size: int) -> bytes:
        return os.read(self._fd, size)

    def write(self, data: bytes) -> int:
        return os.write(self._fd, data)

    def ioctl(self, request: int, arg: int) -> int:
        global _libc_ioctl
        call = _libc_ioctl
        if call is None:
            call = _libc_ioctl = _load_libc_ioctl()
        return call(self._fd, request, arg)

    def map_page(
        self, length: int = PAGE_SIZE, *, writable: bool = False, shared: bool = True, offset: int = 0
    ) -> memoryview:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        flags = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE
        mapping = mmap.mmap(self._fd, length, flags=flags, prot=prot, offset=offset)
        self._maps.append(mapping)
        return memoryview(mapping)

    def is_character_device(self) -> bool:
        return stat.S_ISCHR(os.fstat(self._fd).st_mode)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        maps, self._maps = self._maps, []
        for mapping in maps:
            # Python's mmap holds a dup of the fd: the open file (and its watcher) lives
            # until every mapping is closed. A view still exported elsewhere keeps it.
            with contextlib.suppress(BufferError):
                mapping.close()
        if fd >= 0:
            os.close(fd)


Opener = Callable[..., RawFile]
_openers: dict[str, Opener] = {}
_openers_lock = threading.Lock()


def install_opener(path: str, opener: Opener) -> None:
    """Serve opens of ``path`` with ``opener`` (how the simulator is installed)."""
    with _openers_lock:
        if path in _openers:
            raise ValueError(f"a simulated device is already installed at {path}")
        _openers[path] = opener


def remove_opener(path: str, opener: Opener) -> None:
    with _openers_lock:
        if _openers.get(path) == opener:
            del _openers[path]


#: Set while a simulator is installed with ``set_env``: ``PID:PATH`` of the process serving it.
SIMULATOR_ENV_VAR = "SYSGENID_SIMULATOR"


def opened_in_process(path: str) -> bool:
    """Whether opens of ``path`` are served in this process (a simulator installed there):
    another process cannot open it."""
    return path in _openers


def open_raw(path: str, *, readonly: bool = False, nonblock: bool = True) -> RawFile:
    """Open ``path``: the simulator installed there, or else the real node."""
    opener = _openers.get(path)
    if opener is not None:
        return opener(readonly=readonly, nonblock=nonblock)
    try:
        return KernelFile.open(path, readonly=readonly, nonblock=nonblock)
    except FileNotFoundError:
        _refuse_foreign_simulator(path)
        raise


def _refuse_foreign_simulator(path: str) -> None:
    """A process started by one whose simulator stood at ``path`` (spawn) cannot reach it."""
    owner, _, simulated = os.environ.get(SIMULATOR_ENV_VAR, "").partition(":")
    if simulated == path and owner != str(os.getpid()):
        from .errors import SimulatorProcessError

        raise SimulatorProcessError(
            None,
            f"{path}: the simulated sysgenid device installed by process {owner} is not reachable from "
            f"process {os.getpid()}: the simulator lives in one process's memory. Test across processes "
            "on the kernel device.",
            path,
        )
