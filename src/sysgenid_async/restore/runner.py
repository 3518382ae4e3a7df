"""The runner's side of a gate: a pass over the hooks, holding the gate's one turn.

- The restore watcher's task runs every kind of pass (``run_restore``, ``run_lifecycle``);
  a newer generation cancels the pass at its next checkpoint (``moved_on`` returns).
- Without a watcher, a caller's thread runs the sync hooks of a restore pass (``run_inline``),
  with the turn that the gate gave it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..device import Device
from .passes import LifecyclePass, MovedOn, PassOutcome, cancelled_when, run_lifecycle_pass, run_restore_pass
from .phases import HookError, HookKind

if TYPE_CHECKING:  # for annotations only: the gate calls run_inline
    from .gate import RestoreGate

__all__ = ["run_inline", "run_lifecycle", "run_restore"]


async def run_restore(
    gate: RestoreGate, runner: object, generation: int, moved_on: MovedOn
) -> tuple[PassOutcome, list[HookError]]:
    """Run a restore pass for ``generation`` as ``runner`` (the watcher), from where the last
    one stopped (a failed phase again); how it ended, and its failures."""
    await gate.take_turn(runner)
    try:
        progress = gate.begin(generation)
        if progress is None:
            return PassOutcome.SUCCEEDED, []
        probe = gate.probe()
        with gate.running_hooks():
            body = run_restore_pass(
                progress, lambda: probe.generation == generation,
                lambda hook, error: gate.record(progress, hook, error),
            )
            if any(not hook.runs_inline for hook in progress.hooks[progress.index:]):
                await cancelled_when(moved_on, body)
            else:
                await body  # no await inside: each hook looks at the page before it runs
        return gate.outcome(progress, probe.generation == generation)
    finally:
        gate.give_turn_back()


async def run_lifecycle(
    gate: RestoreGate, runner: object, kind: HookKind, generation: int, budget: float | None, moved_on: MovedOn
) -> LifecyclePass:
    """Run every hook of ``kind`` once as ``runner`` (the watcher), within ``budget`` seconds;
    a restore meanwhile (``moved_on`` returns) cancels the pass."""
    registry = gate.registry()
    if registry is None:
        return LifecyclePass()
    await gate.take_turn(runner)
    try:
        result = LifecyclePass()
        with gate.running_hooks():
            await cancelled_when(
                moved_on, run_lifecycle_pass(result, registry.lifecycle_hooks(kind), kind, generation, budget)
            )
        result.superseded = gate.probe().generation != generation
        return result
    finally:
        gate.give_turn_back()


def run_inline(gate: RestoreGate, generation: int) -> None:
    """Run the sync hooks of a restore pass in this thread, holding the turn the gate gave it."""
    try:
        progress = gate.begin(generation)
        if progress is None:
            return
        probe = gate.probe()
        # Look at the page between hooks; a probe that opens a file per read (v4) is not worth it.
        mapped = isinstance(probe, Device)
        current: Callable[[], bool] = lambda: not mapped or probe.generation == generation  # noqa: E731
        with gate.running_hooks():
            while (hook := progress.next_hook()) is not None and hook.runs_inline and current():
                gate.record(progress, hook, hook.attempt_inline(generation))
    finally:
        gate.give_turn_back()
