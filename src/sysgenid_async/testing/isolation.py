"""Test isolation: the process-wide state of the library, fresh for one test.

    from sysgenid_async.testing import isolated_state

    @pytest.fixture(autouse=True)
    def clean_sysgenid():
        with isolated_state():
            yield

The ``sysgenid_sim`` fixture does this for you. What is process-wide, and so leaks from
one test to the next without it: the process's hook registry (``restore_hooks``, which
``@on_restore`` and ``install_default_hooks()`` fill) and its restore gate, the process
probe that generation-bound values read, the registries of identities and ``random``
instances that the ready-made hooks renew, the before-snapshot and resume hooks, and the
machine's watcher registry: a restore watcher started in the block announces itself in a
temporary directory of its own (``$SYSGENID_ASYNC_RUNTIME_DIR``), so a test never shows up in
the machine's ``/run/sysgenid-async`` nor answers its ``prepare``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from ..restore import probe, reseed
from ..restore.hooks import restore_hooks
from ..restore.phases import HookKind
from ..restore.registry import RUNTIME_DIR_VARIABLE

__all__ = ["isolated_state"]


@contextlib.contextmanager
def isolated_state() -> Iterator[None]:
    """Run the block with empty process-wide registries and a fresh gate and probe; put the
    registries back afterwards (hooks registered by the block are dropped)."""
    saved_hooks = {kind: restore_hooks.replace_hooks([], kind) for kind in HookKind}
    probe.close_process_probe()
    restore_hooks.gate.reset()
    saved_runtime_dir = os.environ.get(RUNTIME_DIR_VARIABLE)
    try:
        # Short and under /tmp: the control sockets' paths are limited to 107 bytes.
        with reseed.emptied_registries(), tempfile.TemporaryDirectory(prefix="sga-", dir="/tmp") as runtime_dir:
            os.environ[RUNTIME_DIR_VARIABLE] = runtime_dir
            yield
    finally:
        if saved_runtime_dir is None:
            os.environ.pop(RUNTIME_DIR_VARIABLE, None)
        else:
            os.environ[RUNTIME_DIR_VARIABLE] = saved_runtime_dir
        probe.close_process_probe()
        restore_hooks.gate.reset()
        for kind, hooks in saved_hooks.items():
            restore_hooks.replace_hooks(hooks, kind)
