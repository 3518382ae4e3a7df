"""An in-process sysgenid device with both ABIs' semantics, for fast tests.

Each open file has a real eventfd as its pollable descriptor, readable exactly while
the file has not acknowledged the current generation, so event-loop code paths run
as they do on the kernel device. Errors are raised as ``OSError`` with the errno the
kernel module gives. The conformance suite runs the same tests against this and the
kernel module, which is what shows that it is faithful.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import mmap
import os
import sys
import threading
from collections.abc import Iterator

from .. import uapi
from ..device import validate_generation
from ..errors import SimulatorProcessError
from ..rawfile import SIMULATOR_ENV_VAR, install_opener, remove_opener
from ..uapi import TRIGGER_CAPABILITIES, Abi

__all__ = ["TRIGGER_CAPABILITIES", "Flavour", "Quirk", "SimulatedDevice", "SimulatedFile"]



class Quirk(str, enum.Enum):
    """A behaviour of a shipped driver that departs from the project's kernel module.

    docs/drivers.md says what each means for a client, and what the library does about it.
    """

    #: The next value is ``max((int)min, (int)current + 1)`` in a signed 32-bit int, stored
    #: as a u32. Below 0x7FFFFFFF a minimum of 2**31 or more is negative, so ignored; at
    #: 0x7FFFFFFF, ``current + 1`` overflows to -2**31, so a plain change gives 0 and a
    #: minimum of 2**31 or more is taken as it is; from the upper half a plain change gives 0
    #: again. The counter comes back to values it had.
    SIGNED_COUNTER = "signed-counter"
    #: A trigger counts every tracked watcher as outdated, even one already at the value the
    #: trigger left: after ``trigger(0x7FFFFFFF)`` at 0x7FFFFFFF (no change), every
    #: WAIT_WATCHERS times out until the next real change, since neither an acknowledgement
    #: nor a close takes an up-to-date file off the count.
    RECOUNT_ALL_TRACKED = "recount-all-tracked"
    #: SET_WATCHER_TRACKING takes any non-zero argument as on (ours: EINVAL above 1).
    TRACKING_ANY_NONZERO = "tracking-any-nonzero"
    #: A signal during WAIT_WATCHERS gives ERESTARTSYS: a restarted wait starts its timeout again.
    RESTART_ON_SIGNAL = "restart-on-signal"
    #: A read-only MAP_PRIVATE mapping is accepted (ours: MAP_SHARED only).
    PRIVATE_MAPPING = "private-mapping"
    #: The trigger's capability is checked in the caller's user namespace.
    CALLER_USERNS_CAPABILITY = "caller-userns-capability"
    #: The node is 0600: only root opens it, unless a udev rule says otherwise.
    ROOT_ONLY_NODE = "root-only-node"

    @property
    def description(self) -> str:
        """One line: what the driver does."""
        return _QUIRK_DESCRIPTIONS[self]


class Flavour(str, enum.Enum):
    """Whose driver the device behaves like (the kernel module's ``flavour=`` parameter)."""

    #: The project's kernel module.
    SYSGENID_ASYNC = "sysgenid-async"
    #: Amazon Linux's v8 driver.
    AMAZON_LINUX = "amazon-linux"
    #: The v4 patch as posted to LKML (the spec).
    V4_PATCH = "v4-patch"

    @property
    def abi(self) -> Abi | None:
        """The ABI this driver speaks; None for the project's module, which speaks both."""
        return _FLAVOUR_ABI.get(self)

    @property
    def quirks(self) -> frozenset[Quirk]:
        return _FLAVOUR_QUIRKS[self]


_SHIPPED = frozenset({
    Quirk.SIGNED_COUNTER, Quirk.RECOUNT_ALL_TRACKED, Quirk.RESTART_ON_SIGNAL, Quirk.PRIVATE_MAPPING,
    Quirk.CALLER_USERNS_CAPABILITY, Quirk.ROOT_ONLY_NODE,
})
_FLAVOUR_ABI = {Flavour.AMAZON_LINUX: Abi.V8, Flavour.V4_PATCH: Abi.V4}
_FLAVOUR_QUIRKS = {
    Flavour.SYSGENID_ASYNC: frozenset(),
    Flavour.AMAZON_LINUX: _SHIPPED | {Quirk.TRACKING_ANY_NONZERO},
    Flavour.V4_PATCH: _SHIPPED,
}
_QUIRK_DESCRIPTIONS = {
    Quirk.SIGNED_COUNTER: "the next value is max(min, current + 1) in a signed int: after 2147483647 comes 0, "
                          "and a minimum of 2**31 or more is ignored below 2147483647 but taken at it",
    Quirk.RECOUNT_ALL_TRACKED: "a trigger counts every tracked watcher as outdated, even one already at the "
                               "value it left in place",
    Quirk.TRACKING_ANY_NONZERO: "SET_WATCHER_TRACKING takes any non-zero argument as on",
    Quirk.RESTART_ON_SIGNAL: "a signal restarts WAIT_WATCHERS (ERESTARTSYS) with its full timeout",
    Quirk.PRIVATE_MAPPING: "a read-only MAP_PRIVATE mapping is accepted",
    Quirk.CALLER_USERNS_CAPABILITY: "the trigger's capability is checked in the caller's user namespace",
    Quirk.ROOT_ONLY_NODE: "the node is 0600: only root opens it without a udev rule",
}


def _as_int32(value: int) -> int:
    """A u32 read as a two's-complement signed 32-bit int."""
    return value - 2**32 if value >= 2**31 else value


def _next_generation(current: int, minimum: int, quirks: frozenset[Quirk] = frozenset()) -> int:
    """The generation a trigger with ``minimum`` leaves at ``current``: ``max(min, current + 1)``.

    In u32 on the project's module; with :attr:`Quirk.SIGNED_COUNTER`, in a signed 32-bit
    int whose ``current + 1`` wraps (the kernel builds with ``-fno-strict-overflow``), the
    result stored as it is.
    """
    after = (current + 1) & uapi.GENERATION_MAX
    if Quirk.SIGNED_COUNTER in quirks:
        return max(_as_int32(minimum), _as_int32(after)) & uapi.GENERATION_MAX
    return max(minimum, after)


def _counts_as_outdated(acked: int, generation: int, quirks: frozenset[Quirk] = frozenset()) -> bool:
    """Whether a trigger that left ``generation`` counts a tracked file that acknowledged ``acked``."""
    return acked != generation or Quirk.RECOUNT_ALL_TRACKED in quirks


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class SimulatedDevice:
    """The device itself: the generation, its page, and the open files.

    ``abi`` defaults to the flavour's, or v4. ``flavour`` reproduces a shipped driver's
    behaviour (:class:`Flavour`); the user-namespace and node-mode quirks have no meaning
    in one process and are not simulated. ``capabilities`` are those of every caller;
    remove both trigger capabilities to simulate an unprivileged process.
    """

    def __init__(
        self,
        abi: Abi | str | None = None,
        *,
        flavour: Flavour | str = Flavour.SYSGENID_ASYNC,
        generation: int = 0,
        capabilities: frozenset[str] | set[str] = TRIGGER_CAPABILITIES,
    ) -> None:
        self.flavour = Flavour(flavour)
        self.abi = Abi(abi) if abi is not None else self.flavour.abi or Abi.V4
        if self.flavour.abi not in (None, self.abi):
            raise ValueError(f"the {self.flavour.value} flavour speaks {self.flavour.abi.value}, not {self.abi.value}")
        self.quirks = self.flavour.quirks
        self.capabilities = frozenset(capabilities)
        self._cond = threading.Condition(threading.Lock())
        self._page = mmap.mmap(-1, uapi.PAGE_SIZE)
        self._words = memoryview(self._page).cast("I")
        self._words[0] = generation & uapi.GENERATION_MAX
        self._files: list[SimulatedFile] = []
        self._outdated = 0
        self._pid = os.getpid()  # it lives in this process's memory only

    # -- what a test observes and drives ---------------------------------------------

    @property
    def generation(self) -> int:
        return self._words[0]

    @property
    def outdated_watchers(self) -> int:
        with self._cond:
            return self._outdated

    @property
    def open_files(self) -> int:
        with self._cond:
            return len(self._files)

    def bump(self, min_generation: int = 0) -> int:
        """Change the generation as a trigger does: ``max(min, current + 1)``, in u32 or,
        with :attr:`Quirk.SIGNED_COUNTER`, in a signed int."""
        validate_generation(min_generation, "min_generation")
        with self._cond:
            new = _next_generation(self._words[0], min_generation, self.quirks)
            self._words[0] = new
            self._outdated = sum(file.tracked and _counts_as_outdated(file.acked, new, self.quirks)
                                 for file in self._files)
            for file in self._files:
                file._sync_readiness()
            self._cond.notify_all()
            return new

    def open_file(self, *, readonly: bool = False, nonblock: bool = True) -> SimulatedFile:
        """Open the device, as ``open(2)`` on the node would."""
        if os.getpid() != self._pid:
            raise SimulatorProcessError(
                None,
                f"the simulated sysgenid device of process {self._pid} was opened in process {os.getpid()} "
                "(a fork): the simulator lives in one process's memory, and a copy would answer for "
                "itself alone. Test across processes on the kernel device.",
            )
        with self._cond:
            file = SimulatedFile(self, readonly=readonly, nonblock=nonblock)
            self._files.append(file)
            return file

    @contextlib.contextmanager
    def installed(self, path: str = uapi.DEFAULT_DEVICE_PATH, *, set_env: bool = True) -> Iterator[SimulatedDevice]:
        """Serve opens of ``path`` (and, with ``set_env``, the default path) from this device."""
        install_opener(path, self.open_file)
        saved = {name: os.environ.get(name) for name in (uapi.DEVICE_ENV_VAR, SIMULATOR_ENV_VAR)}
        if set_env:
            os.environ[uapi.DEVICE_ENV_VAR] = path
            # Inherited by child processes, so that their open can say a simulator was meant.
            os.environ[SIMULATOR_ENV_VAR] = f"{self._pid}:{path}"
        try:
            yield self
        finally:
            remove_opener(path, self.open_file)
            if set_env:
                for name, value in saved.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value

    # -- the driver side, called by SimulatedFile with self._cond held ---------------

    def _forget(self, file: SimulatedFile) -> None:
        self._files.remove(file)
        if file.tracked and file.acked != self._words[0]:
            self._outdated -= 1
        self._cond.notify_all()


class SimulatedFile:
    """One open file of a :class:`SimulatedDevice`: the :class:`~sysgenid_async.rawfile.RawFile` interface."""

    def __init__(self, device: SimulatedDevice, *, readonly: bool, nonblock: bool) -> None:
        self._device = device
        self._readonly = readonly
        self._nonblock = nonblock
        self.acked = device._words[0]
        self.tracked = device.abi.every_fd_is_a_watcher
        self._eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._signalled = False
        self._closed = False

    # Readiness mirrors state: the eventfd holds 1 exactly while this file is outdated.
    def _sync_readiness(self) -> None:
        outdated = self.acked != self._device._words[0]
        if outdated and not self._signalled:
            os.eventfd_write(self._eventfd, 1)
            self._signalled = True
        elif not outdated and self._signalled:
            os.eventfd_read(self._eventfd)
            self._signalled = False

    def _check_open(self) -> None:
        if self._closed:
            raise _oserror(errno.EBADF)

    def _outdated(self) -> bool:
        return self.acked != self._device._words[0]

    def fileno(self) -> int:
        return self._eventfd if not self._closed else -1

    def read(self, size: int) -> bytes:
        dev = self._device
        with dev._cond:
            self._check_open()
            if size == 0:
                return b""
            if size < uapi.GENERATION_SIZE:
                raise _oserror(errno.EINVAL)
            while not self._outdated():
                if self._nonblock:
                    raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
                dev._cond.wait()
                self._check_open()
            return dev._words[0].to_bytes(uapi.GENERATION_SIZE, sys.byteorder)

    def write(self, data: bytes) -> int:
        dev = self._device
        with dev._cond:
            self._check_open()
            if self._readonly:
                raise _oserror(errno.EBADF)
            if len(data) != uapi.GENERATION_SIZE:
                raise _oserror(errno.ENOBUFS if dev.abi is Abi.V8 else errno.EINVAL)
            value = int.from_bytes(data, sys.byteorder)
            if value != dev._words[0]:
                raise _oserror(errno.EINVAL)
            if self.acked != value:
                self.acked = value
                if self.tracked:
                    dev._outdated -= 1
                self._sync_readiness()
                dev._cond.notify_all()
            return len(data)

    def ioctl(self, request: int, arg: int) -> int:
        dev = self._device
        if not 0 <= arg < 2**64:
            raise OverflowError("ioctl argument out of range for unsigned long")
        self._check_open()
        if dev.abi is Abi.V4:
            if request == uapi.SYSGENID_GET_OUTDATED_WATCHERS:
                return dev.outdated_watchers
            if request == uapi.SYSGENID_WAIT_WATCHERS:
                return self._wait_watchers(arg)
            if request == uapi.SYSGENID_FORCE_GEN_UPDATE:
                return self._trigger(arg)
        else:
            if request == uapi.SYSGENID_V8_SET_WATCHER_TRACKING:
                return self._set_tracking(arg)
            if request == uapi.SYSGENID_V8_WAIT_WATCHERS:
                return self._wait_watchers(arg)
            if request == uapi.SYSGENID_V8_TRIGGER_GEN_UPDATE:
                return self._trigger(arg)
        raise _oserror(errno.EINVAL)

    def _trigger(self, arg: int) -> int:
        if not self._device.capabilities & TRIGGER_CAPABILITIES:
            raise _oserror(errno.EACCES)
        self._device.bump(arg & uapi.GENERATION_MAX)  # the kernel takes the low 32 bits
        return 0

    def _set_tracking(self, arg: int) -> int:
        dev = self._device
        if arg > 1 and Quirk.TRACKING_ANY_NONZERO not in dev.quirks:
            raise _oserror(errno.EINVAL)
        with dev._cond:
            if self.tracked != bool(arg):
                self.tracked = bool(arg)
                if self._outdated():
                    dev._outdated += 1 if arg else -1
                dev._cond.notify_all()
        return 0

    def _wait_watchers(self, timeout_ms: int) -> int:
        dev = self._device
        with dev._cond:
            if self._outdated():
                raise _oserror(errno.EINTR)
            done = dev._cond.wait_for(
                lambda: self._closed or dev._outdated == 0 or self._outdated(),
                None if timeout_ms == 0 else timeout_ms / 1000,
            )
            self._check_open()
            if self._outdated():
                raise _oserror(errno.EINTR)
            if not done:
                raise _oserror(errno.ETIME if dev.abi is Abi.V8 else errno.EINTR)
            return 0

    def map_page(
        self, length: int = uapi.PAGE_SIZE, *, writable: bool = False, shared: bool = True, offset: int = 0
    ) -> memoryview:
        self._check_open()
        if offset != 0 or not 0 < length <= uapi.PAGE_SIZE:
            raise _oserror(errno.EINVAL)
        if writable:
            raise _oserror(errno.EPERM)
        if not shared and Quirk.PRIVATE_MAPPING not in self._device.quirks:
            raise _oserror(errno.EINVAL)
        return memoryview(self._device._page)[:length].toreadonly()

    def is_character_device(self) -> bool:
        return True

    def close(self) -> None:
        dev = self._device
        with dev._cond:
            if self._closed:
                return
            self._closed = True
            dev._forget(self)
        os.close(self._eventfd)
