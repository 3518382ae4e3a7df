"""sysgenid-async: follow the Linux System Generation ID device (/dev/sysgenid) from async code.

    from sysgenid_async import watch

    async with watch() as changes:
        async for generation in changes:
            reseed_and_rebuild()    # acknowledged once this body finishes

Layers, bottom up: :mod:`~sysgenid_async.uapi` (ABI constants),
:mod:`~sysgenid_async.rawfile` (syscalls), :mod:`~sysgenid_async.device` (the fd owner,
no event loop), :mod:`~sysgenid_async.async_device` and :mod:`~sysgenid_async.watch`
(anyio), :mod:`~sysgenid_async.blocking` (the blocking twin); the application layer:
:mod:`~sysgenid_async.hooks`, :mod:`~sysgenid_async.restore_watcher`,
:mod:`~sysgenid_async.bound`, :mod:`~sysgenid_async.reseed`,
:mod:`~sysgenid_async.orchestrator`; at the edges
:mod:`~sysgenid_async.cli` and :mod:`~sysgenid_async.testing`.
"""

from ._version import __version__
from .async_device import AsyncSysGenID, open_sysgenid
from .blocking import BlockingSysGenID, watch_blocking
from .bound import AsyncGenerationBound, GenerationBound, generation_bound
from .device import Device, WaitResult
from .errors import (
    AbiMismatchError,
    DeviceClosedError,
    DeviceIOError,
    DeviceNotFoundError,
    DevicePermissionError,
    ForkedHandleError,
    NotASysGenIDDeviceError,
    RestorePendingError,
    RestoreWatcherRunningError,
    StaleGenerationError,
    SysGenIDError,
    TriggerPermissionError,
    UnsupportedByAbiError,
)
from .gate import restored
from .hooks import HookError, Phase, RestoreHooks, RestoreHooksError, on_restore, restore_hooks
from .orchestrator import OrchestrationReport, Orchestrator
from .restore_watcher import RestoreWatcher, RetryPolicy, Subscription, restore_watcher
from .uapi import Abi
from .watch import watch

__all__ = [
    "Abi",
    "AbiMismatchError",
    "AsyncGenerationBound",
    "AsyncSysGenID",
    "BlockingSysGenID",
    "Device",
    "DeviceClosedError",
    "DeviceIOError",
    "DeviceNotFoundError",
    "DevicePermissionError",
    "ForkedHandleError",
    "GenerationBound",
    "HookError",
    "NotASysGenIDDeviceError",
    "OrchestrationReport",
    "Orchestrator",
    "Phase",
    "RestoreHooks",
    "RestoreHooksError",
    "RestorePendingError",
    "RestoreWatcher",
    "RestoreWatcherRunningError",
    "RetryPolicy",
    "StaleGenerationError",
    "Subscription",
    "SysGenIDError",
    "TriggerPermissionError",
    "UnsupportedByAbiError",
    "WaitResult",
    "__version__",
    "generation_bound",
    "on_restore",
    "open_sysgenid",
    "restore_hooks",
    "restore_watcher",
    "restored",
    "watch",
    "watch_blocking",
]
