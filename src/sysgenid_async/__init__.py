"""sysgenid-async: follow the Linux System Generation ID device (/dev/sysgenid) from async code.

    from sysgenid_async import watch

    async with watch() as changes:
        async for generation in changes:
            reseed_and_rebuild()    # acknowledged when the loop body finishes without an error

This module holds the core: the handles and ``watch()``. The restore layer (hooks, the
restore watcher, bound values, ready-made reseeds, the orchestrator) is
:mod:`sysgenid_async.restore`; every error is in :mod:`sysgenid_async.errors`.

Layers, bottom up: :mod:`~sysgenid_async.uapi` (ABI constants),
:mod:`~sysgenid_async.rawfile` (syscalls), :mod:`~sysgenid_async.device` (the fd owner and
its waiter registry, no event loop), :mod:`~sysgenid_async.async_device`,
:mod:`~sysgenid_async.watch` and :mod:`~sysgenid_async.blocking` (the handles);
:mod:`sysgenid_async.restore`; at the edges :mod:`~sysgenid_async.cli` and
:mod:`~sysgenid_async.testing`.
"""

from ._version import __version__
from .async_device import AsyncSysGenID, open_sysgenid
from .blocking import BlockingSysGenID, watch_blocking
from .device import WaitResult
from .errors import (
    DeviceClosedError,
    DeviceNotFoundError,
    DevicePermissionError,
    StaleGenerationError,
    SysGenIDError,
    UnsupportedByAbiError,
)
from .uapi import Abi
from .watch import watch

__all__ = [
    "Abi",
    "AsyncSysGenID",
    "BlockingSysGenID",
    "DeviceClosedError",
    "DeviceNotFoundError",
    "DevicePermissionError",
    "StaleGenerationError",
    "SysGenIDError",
    "UnsupportedByAbiError",
    "WaitResult",
    "__version__",
    "open_sysgenid",
    "watch",
    "watch_blocking",
]
