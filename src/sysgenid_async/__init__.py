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
:mod:`~sysgenid_async.changes` (`watch()`) and :mod:`~sysgenid_async.blocking` (the handles);
:mod:`sysgenid_async.restore`; at the edges :mod:`~sysgenid_async.cli` and
:mod:`~sysgenid_async.testing`.
"""

from typing import TYPE_CHECKING

from ._version import __version__

#: Where each public name lives: loaded on first use, so that ``import sysgenid_async`` (or a
#: tool that only wants the version) pays for nothing it does not use.
_HOMES = {
    "Abi": "uapi",
    "AsyncSysGenID": "async_device",
    "BlockingSysGenID": "blocking",
    "DeviceClosedError": "errors",
    "DeviceNotFoundError": "errors",
    "DevicePermissionError": "errors",
    "StaleGenerationError": "errors",
    "SysGenIDError": "errors",
    "UnsupportedByAbiError": "errors",
    "WaitResult": "device",
    "open_sysgenid": "async_device",
    "watch": "changes",
    "watch_blocking": "blocking",
}

if TYPE_CHECKING:  # type checkers see the names themselves (and so reject a misspelt one)
    from .async_device import AsyncSysGenID, open_sysgenid
    from .blocking import BlockingSysGenID, watch_blocking
    from .changes import watch
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
else:

    def __getattr__(name: str) -> object:
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(__all__))

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
