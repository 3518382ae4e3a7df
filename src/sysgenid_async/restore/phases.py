"""Where a hook runs in a pass (its phase), which kind of pass it belongs to, and how hooks fail."""

from __future__ import annotations

import enum
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if sys.version_info < (3, 11):  # pragma: no cover - the backport on 3.10
    from exceptiongroup import ExceptionGroup

if TYPE_CHECKING:  # for annotations only: hook.py imports this module
    from .hook import RestoreHook

__all__ = ["HookError", "HookKind", "Phase", "RestoreHooksError"]


class Phase(enum.IntEnum):
    """Named places in the run order: what must be unique first, what depends on it after.

    A hook's ``priority`` defaults to its phase's value; an explicit priority places it
    among the phases (lower runs first).
    """

    #: random number generators: everything after may draw from them
    RESEED = 100
    #: per-process identities (UUIDs, instance ids)
    IDENTITIES = 200
    #: keys, tokens, nonces derived from the above
    SECRETS = 300
    #: caches of anything above
    CACHES = 400
    #: connections and pools, which may carry identities and secrets
    CONNECTIONS = 500
    #: hooks registered without a phase
    DEFAULT = 600


class HookKind(enum.Enum):
    """When a hook runs in the snapshot lifecycle."""

    #: after a restore (a generation change): ``@on_restore``
    RESTORE = "restore"
    #: before a snapshot, when ``prepare`` asks: ``@on_before_snapshot``
    BEFORE_SNAPSHOT = "before-snapshot"
    #: when ``resume`` continues the original VM after a prepare: ``@on_resume``
    RESUME = "resume"


class HookError(Exception):
    """One hook's failure, naming the hook; the original error is its ``__cause__``."""

    def __init__(
        self, hook: RestoreHook, generation: int, error: BaseException, kind: HookKind = HookKind.RESTORE
    ) -> None:
        reason = "timed out" if isinstance(error, TimeoutError) else f"raised {error!r}"
        super().__init__(f"{kind.value} hook {hook.name} {reason} for generation {generation}")
        self.hook = hook
        self.generation = generation
        self.kind = kind
        self.__cause__ = error


class RestoreHooksError(ExceptionGroup[HookError]):
    """Some hooks failed for a generation; every other hook still ran."""

    generation: int
    hooks: list[RestoreHook]

    def __new__(cls, generation: int, errors: Sequence[HookError]) -> RestoreHooksError:
        group = super().__new__(cls, f"{len(errors)} restore hook(s) failed for generation {generation}", errors)
        group.generation = generation
        group.hooks = [error.hook for error in errors]
        return group

    def derive(self, excs: Sequence[Exception]) -> RestoreHooksError:  # type: ignore[override]
        return RestoreHooksError(self.generation, [e for e in excs if isinstance(e, HookError)])
