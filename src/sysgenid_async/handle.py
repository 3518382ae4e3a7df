"""What the async and the blocking handle share: a held ``Device``, and the calls a user makes.

- A handle *holds* its :class:`~sysgenid_async.device.Device` (:attr:`Handle.device`), as
  trio's streams hold their fd owner: the fd layer's waiter registry and syscalls stay
  there, for tools, and out of the handles' own surface.
- Closing the handle closes the device; the device wakes whoever waits on it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .device import Device, OpenOptions

if TYPE_CHECKING:
    from typing_extensions import Self, Unpack

__all__ = ["Handle"]


class Handle:
    """An open file of the device, held for a user: the fast probe, acknowledgement, the counts."""

    def __init__(self, device: Device) -> None:
        #: The fd layer underneath (its waiter registry and syscalls), for tools.
        self.device = device
        #: The device path it was opened at.
        self.path = device.path
        #: The ABI the device speaks.
        self.abi = device.abi
        #: Whether this handle counts among the device's watchers (v4: always).
        self.watcher = device.watcher
        #: Opened read-only, for probing: it cannot acknowledge.
        self.readonly = device.readonly

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, **options: Unpack[OpenOptions]) -> Self:
        """Open the device: ``abi=``, ``watcher=`` (see :meth:`Device.open <sysgenid_async.device.Device.open>`)."""
        return cls(Device.open(path, **options))

    @property
    def generation(self) -> int:
        """The current generation, read from the mapped page: no syscall."""
        return self.device.generation

    @property
    def acknowledged(self) -> int:
        """The generation this handle last acknowledged (at first, the one it opened at)."""
        return self.device.acknowledged

    @property
    def closed(self) -> bool:
        return self.device.closed

    def fileno(self) -> int:
        """The pollable descriptor (readable while this handle is outdated); -1 once closed."""
        return self.device.fileno()

    def read_nowait(self) -> int | None:
        """The generation this handle has not acknowledged yet, or None when up to date."""
        return self.device.read_nowait()

    def ack(self, generation: int) -> None:
        """Acknowledge ``generation``, which must be the current one
        (:class:`~sysgenid_async.StaleGenerationError` otherwise)."""
        self.device.ack(generation)

    def ack_unless_moved_on(self, generation: int) -> bool:
        """Acknowledge ``generation`` unless the device has moved past it; whether it did."""
        return self.device.ack_unless_moved_on(generation)

    def is_outdated(self) -> bool:
        """Whether this handle has a generation it has not acknowledged."""
        return self.device.is_outdated()

    def outdated_watchers(self) -> int:
        """v4: how many watchers have not acknowledged the current generation."""
        return self.device.outdated_watchers()

    def set_tracking(self, enabled: bool) -> None:
        """v8: count this handle among the watchers, or not."""
        self.device.set_tracking(enabled)

    def trigger(self, min_generation: int = 0) -> int:
        """Force a change to ``max(min_generation, current + 1)`` (privileged); the new generation."""
        return self.device.trigger(min_generation)

    def close(self) -> None:
        """Close: idempotent, from any thread; every waiter gets DeviceClosedError."""
        self.device.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.device.closed else f"fd={self.device.fileno()}"
        return f"<{type(self).__name__} {self.path} abi={self.abi.value} {state}>"
