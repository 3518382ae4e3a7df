"""The names that moved in 0.x: importable from the old place for one release, with a warning."""

from __future__ import annotations

import importlib
import sys
import warnings

__all__ = ["alias_module", "moved_attribute"]

#: Names that were in ``sysgenid_async`` itself, and the module they live in now.
MOVED_NAMES = {
    **dict.fromkeys(
        (
            "AsyncGenerationBound", "GenerationBound", "HookError", "OrchestrationReport", "Orchestrator", "Phase",
            "RestoreHooks", "RestoreHooksError", "RestorePendingError", "RestoreWatcher",
            "RestoreWatcherRunningError", "RetryPolicy", "Subscription", "generation_bound", "on_restore",
            "restore_hooks", "restore_watcher", "restored",
        ),
        "sysgenid_async.restore",
    ),
    **dict.fromkeys(
        ("AbiMismatchError", "DeviceIOError", "ForkedHandleError", "NotASysGenIDDeviceError",
         "TriggerPermissionError"),
        "sysgenid_async.errors",
    ),
    # The fd layer: the blocking handle, BlockingSysGenID, is the public one.
    "Device": "sysgenid_async.device",
}


def moved_attribute(name: str) -> object:
    """``sysgenid_async.<name>`` for a name that moved: warn, then hand it out from its new home."""
    where = MOVED_NAMES.get(name)
    if where is None:
        raise AttributeError(f"module 'sysgenid_async' has no attribute {name!r}")
    warnings.warn(
        f"sysgenid_async.{name} has moved: import it from {where} (the old name goes in the next release)",
        DeprecationWarning,
        stacklevel=2,  # the package's __getattr__ is this function: the caller is one frame up
    )
    return getattr(importlib.import_module(where), name)


def alias_module(old: str, new: str) -> None:
    """Make the module ``old`` the module ``new``, with a warning (called from the old module)."""
    warnings.warn(
        f"{old} has moved to {new} (the old module goes in the next release)", DeprecationWarning, stacklevel=3
    )
    sys.modules[old] = importlib.import_module(new)
