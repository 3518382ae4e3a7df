"""A pure-Python reference model of the sysgenid device, both ABIs, written from the spec.

It knows nothing of the simulator or the kernel module: it is the third opinion in the
differential test (tests/test_model.py), which drives the model and a real backend with
the same random operations and compares every answer. An operation returns its result,
or the errno the device must give.

Open files and handles are distinct, as in the kernel: ``share()`` gives a second handle
on the same open file (what ``dup`` or ``fork`` gives), and the file lives until its last
handle closes.

``quirks`` are the observed departures of a shipped driver (docs/drivers.md). The model
keeps the set of files the driver *counts* as outdated: on a conforming driver that is
exactly the tracked files that have not acknowledged, but a driver with
``RECOUNT_ALL_TRACKED`` counts files that are up to date, and no acknowledgement or close
of theirs takes them off the count.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from sysgenid_async.testing import Quirk
from sysgenid_async.uapi import Abi

U32 = 2**32
INT_MAX = 2**31 - 1


def _signed(value: int) -> int:
    """A u32 as the C int it is on a two's-complement machine."""
    return value - U32 if value > INT_MAX else value


@dataclass
class OpenFile:
    acked: int
    tracked: bool
    readonly: bool
    handles: set[int] = field(default_factory=set)


class DeviceModel:
    def __init__(self, abi: Abi, generation: int, quirks: frozenset[Quirk] = frozenset()) -> None:
        self.abi = abi
        self.generation = generation
        self.quirks = quirks
        self.files: dict[int, OpenFile] = {}  # by file id
        self.counted: set[int] = set()  # the file ids the driver counts as outdated
        self.handles: dict[int, int] = {}  # handle id -> file id
        self._next = 0

    def _id(self) -> int:
        self._next += 1
        return self._next

    def _file(self, handle: int) -> OpenFile:
        return self.files[self.handles[handle]]

    # -- what a process sees --------------------------------------------------------------

    def open(self, *, readonly: bool) -> int:
        """A new file starts up to date; on v4 every file is a watcher, on v8 none until asked."""
        file_id, handle = self._id(), self._id()
        self.files[file_id] = OpenFile(self.generation, self.abi is Abi.V4, readonly, {handle})
        self.handles[handle] = file_id
        return handle

    def share(self, handle: int) -> int:
        new = self._id()
        file_id = self.handles[handle]
        self.handles[new] = file_id
        self.files[file_id].handles.add(new)
        return new

    def close(self, handle: int) -> None:
        file_id = self.handles.pop(handle)
        file = self.files[file_id]
        file.handles.discard(handle)
        if not file.handles:
            del self.files[file_id]
            if file.acked != self.generation:
                self.counted.discard(file_id)

    def outdated(self, handle: int) -> bool:
        return self._file(handle).acked != self.generation

    def read(self, handle: int, size: int) -> int | bytes:
        """A non-blocking read: the generation while outdated, else EAGAIN."""
        if size == 0:
            return b""
        if size < 4:
            return errno.EINVAL
        if not self.outdated(handle):
            return errno.EAGAIN
        return self.generation.to_bytes(4, "little")  # compared by value, not by byte order

    def write(self, handle: int, value: int, size: int = 4) -> int:
        """An acknowledgement: 0, or the errno."""
        file = self._file(handle)
        if file.readonly:
            return errno.EBADF
        if size != 4:
            return errno.EINVAL if self.abi is Abi.V4 else errno.ENOBUFS
        if value != self.generation:
            return errno.EINVAL
        if file.acked != value:
            self.counted.discard(self.handles[handle])
        file.acked = value
        return 0

    def trigger(self, minimum: int) -> None:
        """max(minimum, current + 1): in u32, past 2**32 - 1 the next is 0.

        With SIGNED_COUNTER the drivers compute it in a signed 32-bit int and store the
        result as it is: u32 values of 2**31 and more are negative there, and current + 1
        wraps from INT_MAX to INT_MIN. With RECOUNT_ALL_TRACKED every tracked file is
        counted afterwards, up to date or not.
        """
        following = (self.generation + 1) % U32
        if Quirk.SIGNED_COUNTER in self.quirks:
            self.generation = max(_signed(minimum), _signed(following)) % U32
        else:
            self.generation = max(minimum % U32, following)
        every_tracked = Quirk.RECOUNT_ALL_TRACKED in self.quirks
        self.counted = {
            file_id for file_id, file in self.files.items()
            if file.tracked and (file.acked != self.generation or every_tracked)
        }

    def outdated_watchers(self) -> int:
        return len(self.counted)

    def set_tracking(self, handle: int, value: int) -> int:
        if value > 1 and Quirk.TRACKING_ANY_NONZERO not in self.quirks:
            return errno.EINVAL
        file_id = self.handles[handle]
        file = self.files[file_id]
        if file.tracked != bool(value) and file.acked != self.generation:
            if value:
                self.counted.add(file_id)
            else:
                self.counted.discard(file_id)
        file.tracked = bool(value)
        return 0

    def wait_watchers(self, handle: int) -> int:
        """WAIT_WATCHERS with a short timeout, nobody acting meanwhile: 0 or the errno.

        A caller that is itself outdated can never see the others caught up: EINTR at
        once. Otherwise 0 when no watcher is outdated, else the timeout's errno (v4 folds
        it into EINTR, v8 gives ETIME).
        """
        if self.outdated(handle):
            return errno.EINTR
        if self.outdated_watchers() == 0:
            return 0
        return errno.EINTR if self.abi is Abi.V4 else errno.ETIME
