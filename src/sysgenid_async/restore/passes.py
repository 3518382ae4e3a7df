"""Passes over the hooks: how far a restore has got, and the one function that runs each kind.

- A restore pass runs the hooks in order; a failure lets the rest of its phase run and ends
  the pass after it; the next pass starts again at the failed phase (hooks are idempotent).
- A before-snapshot or resume pass runs every hook once whatever fails, within a budget.
- A cancellation propagates at once; the hook it interrupted has not ended.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from ..timeouts import Deadline
from .hook import RestoreHook
from .phases import HookError, HookKind

__all__ = [
    "LifecyclePass",
    "MovedOn",
    "PassOutcome",
    "RestoreProgress",
    "cancelled_when",
    "run_lifecycle_pass",
    "run_restore_pass",
]

#: How a runner waits for the device to leave a generation (returns once it has).
MovedOn = Callable[[], Awaitable[object]]


class RestoreProgress:
    """How far the restore of one generation has got, pass after pass."""

    __slots__ = ("errors", "failed_phase", "generation", "hooks", "index", "succeeded_count")

    def __init__(self, generation: int, hooks: list[RestoreHook]) -> None:
        self.generation = generation
        self.hooks = hooks
        self.succeeded_count = 0  # hooks[:succeeded_count] have succeeded, in order: what values may rely on
        self.index = 0  # the next hook of the current pass
        self.failed_phase: int | None = None  # set by a failure: the pass ends after this phase
        self.errors: list[HookError] = []  # the current pass's failures

    @property
    def succeeded(self) -> bool:
        return self.succeeded_count >= len(self.hooks)

    @property
    def failed(self) -> bool:
        """The current pass has ended on a failure (the rest of the failed phase has run)."""
        return self.failed_phase is not None and self.next_hook() is None

    def ready_through(self, priority: float) -> bool:
        """Whether every hook with a priority up to ``priority`` has succeeded."""
        return self.succeeded or self.hooks[self.succeeded_count].priority > priority

    def phase_ended(self) -> bool:
        """Whether the hook just recorded was the last of its phase (or of the pass)."""
        index = self.index
        hooks = self.hooks
        return index >= len(hooks) or hooks[index].priority != hooks[index - 1].priority

    def next_hook(self) -> RestoreHook | None:
        """The hook the current pass runs next; None once the pass is over."""
        if self.index >= len(self.hooks):
            return None
        hook = self.hooks[self.index]
        if self.failed_phase is not None and hook.priority > self.failed_phase:
            return None
        return hook

    def record(self, hook: RestoreHook, error: HookError | None) -> None:
        """``hook``, the pass's next one, has ended: succeeded (``error`` None) or failed."""
        if error is None:
            if self.succeeded_count == self.index:
                self.succeeded_count += 1
        else:
            self.errors.append(error)
            if self.failed_phase is None:
                self.failed_phase = hook.priority
        self.index += 1

    def start_pass(self) -> None:
        """The next pass goes on where this one stopped; after a failure, at the failed phase's first hook."""
        if self.failed_phase is None:
            return
        phase = self.hooks[self.succeeded_count].priority
        self.index = self.succeeded_count = next(i for i, hook in enumerate(self.hooks) if hook.priority >= phase)
        self.failed_phase = None
        self.errors = []


class PassOutcome(enum.Enum):
    """How a restore pass that the watcher ran ended."""

    #: every hook has succeeded for the generation
    SUCCEEDED = "succeeded"
    #: a phase failed; the pass stopped after it (the errors are the progress's)
    FAILED = "failed"
    #: the device left the generation: a newer pass runs next
    SUPERSEDED = "superseded"


@dataclass
class LifecyclePass:
    """What a before-snapshot or resume pass did."""

    #: the hooks that failed, timed out included
    errors: list[HookError] = field(default_factory=list)
    #: the hooks the pass's budget left unrun, in order
    not_run: list[RestoreHook] = field(default_factory=list)
    #: a restore came meanwhile: the pass was cancelled at its next checkpoint
    superseded: bool = False


async def run_restore_pass(
    progress: RestoreProgress,
    current: Callable[[], bool] = lambda: True,
    record: Callable[[RestoreHook, HookError | None], None] | None = None,
) -> None:
    """Run one pass of ``progress``'s hooks in order, while ``current()`` (the generation is
    still the device's); ``record`` (default: the progress's own) notes each hook's end.

    A failure lets the rest of its phase run, and ends the pass after it. A cancellation
    propagates at once; the hook it interrupted has not ended.
    """
    note = progress.record if record is None else record
    while (hook := progress.next_hook()) is not None and current():
        generation = progress.generation
        note(hook, hook.attempt_inline(generation) if hook.runs_inline else await hook.attempt(generation))


async def cancelled_when(moved_on: MovedOn, body: Awaitable[None]) -> None:
    """Run ``body``, cancelled at its next checkpoint once ``moved_on`` returns."""
    async with anyio.create_task_group() as tasks:

        async def supervise() -> None:
            await moved_on()
            tasks.cancel_scope.cancel()

        tasks.start_soon(supervise)
        await body
        tasks.cancel_scope.cancel()


async def run_lifecycle_pass(
    result: LifecyclePass, hooks: list[RestoreHook], kind: HookKind, generation: int, budget: float | None
) -> None:
    """Run each of ``hooks`` (of ``kind``) once, in order, noting into ``result`` as it goes (a
    cancelled pass leaves what it did there).

    Unlike a restore pass, a failure does not stop the others: before a snapshot every
    pool that can be closed should be. ``budget`` bounds the whole pass (each hook also
    has its own timeout): the hook it interrupts has timed out, the ones after it are
    not run.
    """
    result.not_run = list(hooks)
    deadline = Deadline(budget)  # a run of sync hooks never yields: each looks before it starts
    with anyio.move_on_after(math.inf if budget is None else budget) as budget_scope:
        for hook in hooks:
            if deadline.expired():
                break
            error = await hook.attempt(generation, kind)
            del result.not_run[0]
            if error is not None:
                result.errors.append(error)
    if budget_scope.cancelled_caught and result.not_run:
        interrupted = result.not_run.pop(0)
        timed_out = TimeoutError(f"the {kind.value} pass ran out of time")
        result.errors.append(interrupted._failed(generation, timed_out, kind))
