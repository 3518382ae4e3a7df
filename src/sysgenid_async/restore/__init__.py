"""The restore layer: what a service runs so that nothing it hands out carries pre-restore state.

    from sysgenid_async.restore import Phase, on_restore, restore_watcher

    @on_restore(phase=Phase.RESEED)
    def reseed(generation: int) -> None: ...

    async with restore_watcher():
        await serve()

Modules: :mod:`~sysgenid_async.restore.hooks` (the registry and its phases),
:mod:`~sysgenid_async.restore.gate` (which generation the hooks have run for; ``restored()``),
:mod:`~sysgenid_async.restore.watcher` (the process's watcher and its subscriptions),
:mod:`~sysgenid_async.restore.bound` (values rebuilt per generation),
:mod:`~sysgenid_async.restore.reseed` (ready-made hooks; ``Reopenable``) and
:mod:`~sysgenid_async.restore.orchestrator` (waiting for every watcher on the machine).
"""

from ..errors import RestorePendingError, RestoreWatcherRunningError
from .bound import AsyncGenerationBound, GenerationBound, generation_bound
from .gate import restored
from .hooks import HookError, Phase, RestoreHooks, RestoreHooksError, on_restore, restore_hooks
from .orchestrator import OrchestrationReport, Orchestrator
from .reseed import (
    ProcessIdentity,
    Reopenable,
    install_default_hooks,
    regenerate_identities,
    register_random,
    reseed_numpy,
    reseed_random,
)
from .watcher import RestoreWatcher, RetryPolicy, Subscription, restore_watcher

__all__ = [
    "AsyncGenerationBound",
    "GenerationBound",
    "HookError",
    "OrchestrationReport",
    "Orchestrator",
    "Phase",
    "ProcessIdentity",
    "Reopenable",
    "RestoreHooks",
    "RestoreHooksError",
    "RestorePendingError",
    "RestoreWatcher",
    "RestoreWatcherRunningError",
    "RetryPolicy",
    "Subscription",
    "generation_bound",
    "install_default_hooks",
    "on_restore",
    "regenerate_identities",
    "register_random",
    "reseed_numpy",
    "reseed_random",
    "restore_hooks",
    "restore_watcher",
    "restored",
]
