"""The process probe: where values read the generation when no restore watcher lends its file.

- v8: one probe-only file on the default device, opened on first use and kept (reads are
  loads from its mapped page);
- v4: every open file is a watcher, and a kept probe would stay outdated in an idle process
  and hold orchestrators back: each read opens and closes a file instead;
- after a fork the child forgets the parent's probe (the device layer released its files).
"""

from __future__ import annotations

import os
import threading
from typing import Protocol

from ..device import Device, resolve_device_path
from ..uapi import Abi

__all__ = ["SHORT_LIVED", "GenerationProbe", "close_process_probe", "process_probe", "read_generation"]


class GenerationProbe(Protocol):
    """Anything with a cheap ``generation`` (a handle on the device, a RestoreWatcher)."""

    @property
    def generation(self) -> int: ...


class _ShortLivedProbe:
    """The generation through a file opened and closed per read: no watcher left open (v4)."""

    __slots__ = ()

    @property
    def generation(self) -> int:
        return read_generation()


#: Reads through a file opened and closed per read.
SHORT_LIVED = _ShortLivedProbe()


_probe: Device | None = None
_probe_lock = threading.Lock()
# The default path whose ABI is v4: no long-lived file is kept for it.
_short_lived_path: str | None = None


def process_probe() -> Device | None:
    """A probe-only file on the default device, kept open; None where the device is v4."""
    global _probe, _short_lived_path
    probe = _probe
    if probe is not None and not probe.closed:
        return probe
    with _probe_lock:
        path = resolve_device_path()
        if _probe is not None and not _probe.closed and _probe.path == path:
            return _probe
        if _short_lived_path == path:
            return None
        device = Device.open(path, watcher=False)
        if device.abi is Abi.V4:
            # Every open file is a watcher on v4: a kept probe would stay outdated in an idle
            # process and hold orchestrators back. Read through short-lived files instead.
            device.close()
            _short_lived_path = path
            return None
        _probe = device
        return device


def read_generation(path: str | os.PathLike[str] | None = None) -> int:
    """The current generation through a file opened and closed at once (no watcher left)."""
    with Device.open(path, watcher=False) as device:
        return device.generation


def close_process_probe() -> None:
    """Close the process probe; the next use opens it again (the default path may have changed)."""
    global _probe, _short_lived_path
    with _probe_lock:
        if _probe is not None:
            _probe.close()
        _probe = None
        _short_lived_path = None


def _after_fork_in_child() -> None:
    global _probe, _probe_lock, _short_lived_path
    _probe, _probe_lock, _short_lived_path = None, threading.Lock(), None


os.register_at_fork(after_in_child=_after_fork_in_child)
