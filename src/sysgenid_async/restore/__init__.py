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
:mod:`~sysgenid_async.restore.reseed` (ready-made hooks),
:mod:`~sysgenid_async.restore.orchestrator` (waiting for every watcher on the machine), and the
snapshot lifecycle (docs/lifecycle.md): :mod:`~sysgenid_async.restore.registry` (the machine's
watcher processes), :mod:`~sysgenid_async.restore.control` (their control sockets),
:mod:`~sysgenid_async.restore.lifecycle` (prepare and resume in a process) and
:mod:`~sysgenid_async.restore.readiness` (systemd, ``wait-ready``, the VMM channel).
"""

from ..errors import RestorePendingError, RestoreWatcherRunningError
from .bound import AsyncGenerationBound, GenerationBound, generation_bound
from .hooks import RestoreHooks, on_before_snapshot, on_restore, on_resume, restore_hooks, restored
from .orchestrator import OrchestrationReport, Orchestrator
from .phases import HookError, HookKind, Phase, RestoreHooksError
from .reseed import (
    ProcessIdentity,
    install_default_hooks,
    regenerate_identities,
    register_random,
    reseed_numpy,
    reseed_openssl,
    reseed_random,
    unregister_random,
)
from .retry import RetryPolicy
from .watcher import RestoreWatcher, Subscription, restore_watcher

__all__ = [
    "AsyncGenerationBound",
    "GenerationBound",
    "HookError",
    "HookKind",
    "OrchestrationReport",
    "Orchestrator",
    "Phase",
    "ProcessIdentity",
    "RestoreHooks",
    "RestoreHooksError",
    "RestorePendingError",
    "RestoreWatcher",
    "RestoreWatcherRunningError",
    "RetryPolicy",
    "Subscription",
    "generation_bound",
    "install_default_hooks",
    "on_before_snapshot",
    "on_restore",
    "on_resume",
    "regenerate_identities",
    "register_random",
    "reseed_numpy",
    "reseed_openssl",
    "reseed_random",
    "unregister_random",
    "restore_hooks",
    "restore_watcher",
    "restored",
]
