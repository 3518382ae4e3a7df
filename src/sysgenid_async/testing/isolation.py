"""Test isolation: the process-wide state of the library, fresh for one test.

    from sysgenid_async.testing import isolated_state

    @pytest.fixture(autouse=True)
    def clean_sysgenid():
        with isolated_state():
            yield

The ``sysgenid_sim`` fixture does this for you. What is process-wide, and so leaks from
one test to the next without it: the process's hook registry (``restore_hooks``, which
``@on_restore`` and ``install_default_hooks()`` fill) and its restore gate, the process
probe that generation-bound values read, and the registries of identities and ``random``
instances that the ready-made hooks renew.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..restore import gate, reseed
from ..restore.hooks import restore_hooks

__all__ = ["isolated_state"]


@contextlib.contextmanager
def isolated_state() -> Iterator[None]:
    """Run the block with empty process-wide registries and a fresh gate and probe; put the
    registries back afterwards (hooks registered by the block are dropped)."""
    saved_hooks = restore_hooks.replace_hooks([])
    gate.close_process_probe()
    restore_hooks.gate.reset()
    try:
        with reseed.emptied_registries():
            yield
    finally:
        gate.close_process_probe()
        restore_hooks.gate.reset()
        restore_hooks.replace_hooks(saved_hooks)
