"""Readiness, for systemd and for the host: is every watcher caught up with the device?

- :func:`sd_notify`: the systemd notification protocol, written directly (one datagram to
  ``$NOTIFY_SOCKET``). The restore watcher sends ``RELOADING=1`` when a change arrives and
  ``READY=1`` when its hooks are done, so a ``Type=notify`` unit shows the restore.
- :func:`readiness`: the registry compared with the device: which live watchers have not
  acknowledged the current generation. ``sysgenid-async wait-ready`` polls it.
- :func:`open_channel`: where ``wait-ready --channel`` writes a line per ready generation,
  for a VMM to read without a shell in the guest: a virtio-serial port (QEMU:
  ``/dev/virtio-ports/NAME``, or ``/dev/vportNpM`` without udev), or ``vsock:CID:PORT``
  (Firecracker: the host listens on the vsock's unix socket, ``<uds_path>_<PORT>``).
"""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import SysGenIDError
from .registry import Registry, WatcherEntry, WatcherState

__all__ = ["ChannelError", "Readiness", "open_channel", "readiness", "sd_notify"]


class ChannelError(SysGenIDError):
    """The readiness channel cannot be opened or written."""


def sd_notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (``"READY=1"``, newline-separated assignments) to systemd; False when
    the process was not started by systemd with a notify socket (nothing is sent)."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # the abstract namespace
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        raise ChannelError(f"NOTIFY_SOCKET must be a path or an abstract name, not {address!r}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError as exc:
            raise ChannelError(f"cannot notify systemd at {address!r}: {exc.strerror}") from None
    return True


def reloading_state() -> str:
    """``RELOADING=1`` with the ``MONOTONIC_USEC`` that systemd 253 and later ask for with it."""
    return f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


@dataclass(frozen=True)
class Readiness:
    """The machine's watchers against the device's generation."""

    generation: int
    watchers: list[WatcherEntry]
    #: the live watchers that have not acknowledged ``generation`` (or are mid-lifecycle)
    late: list[WatcherEntry]

    @property
    def ready(self) -> bool:
        return not self.late

    def record(self) -> dict[str, object]:
        return {
            "generation": self.generation,
            "ready": self.ready,
            "watchers": len(self.watchers),
            "late": [e.summary() for e in self.late],
            "time": time.time(),
            # The machine's CLOCK_MONOTONIC: a host compares it with the guest's other stamps
            # (it does not jump when a clone's wall clock is set).
            "monotonic_ns": time.clock_gettime_ns(time.CLOCK_MONOTONIC),
        }


def readiness(registry: Registry | None, generation: int) -> Readiness:
    """Compare every live entry with the device's ``generation`` (the device is the truth)."""
    watchers = registry.entries() if registry is not None else []
    late = [e for e in watchers if e.late_for(generation) or e.state != WatcherState.READY]
    return Readiness(generation, watchers, late)


def open_channel(spec: str) -> io.RawIOBase:
    """The channel named by ``spec``: ``vsock:CID:PORT``, or the path of a character device
    (a virtio-serial port) or a file, opened for writing."""
    if spec.startswith("vsock:"):
        try:
            _, cid, port = spec.split(":")
            address = (int(cid), int(port))
        except ValueError:
            raise ChannelError(f"a vsock channel is vsock:CID:PORT, not {spec!r}") from None
        family = getattr(socket, "AF_VSOCK", None)
        if family is None:
            raise ChannelError("this Python has no AF_VSOCK")
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        except OSError as exc:
            raise ChannelError(f"no vsock here ({exc.strerror}): load vmw_vsock_virtio_transport") from None
        try:
            sock.connect(address)
        except OSError as exc:
            sock.close()
            raise ChannelError(f"cannot connect to {spec}: {exc.strerror}") from None
        return sock.makefile("wb", buffering=0)  # the file holds the socket open
    if not spec:
        raise ChannelError("the channel path is empty")
    try:
        descriptor = os.open(spec, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as exc:
        hint = " (is the virtio-serial port there? see docs/lifecycle.md)" if exc.errno == errno.ENOENT else ""
        raise ChannelError(f"cannot open the channel {spec}: {exc.strerror}{hint}") from None
    return io.FileIO(descriptor, "wb")


def write_record(channel: io.RawIOBase, record: Mapping[str, object]) -> None:
    """One JSON line on the channel."""
    try:
        channel.write(json.dumps(record, sort_keys=True).encode() + b"\n")
    except OSError as exc:
        raise ChannelError(f"cannot write to the readiness channel: {exc.strerror}") from None
