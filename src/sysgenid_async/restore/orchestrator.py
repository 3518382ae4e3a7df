"""The orchestrator: pause on a restore, confirm, wait for every other watcher, resume.

    async with Orchestrator(timeout=5, pause=stop_accepting, resume=start_accepting) as orchestrator:
        async for report in orchestrator:
            log.info("generation %d: %s, late: %s", report.generation, report.result, report.late_watchers)

If the generation changes again while it waits, the orchestrator starts over with the new
one: it never acknowledges a stale generation and never waits on one that is gone.
On v4 the report says how many watchers were late; v8 has no count, so only whether
anyone was (``late_watchers`` is None). On a timeout, the report also *names* the late
processes that run a restore watcher, from the machine's watcher registry
(``late_processes``: pid, service, state, failing hook and its error); on v4,
``anonymous_late`` is the rest of the kernel's count: files opened outside the library.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from anyio.abc import AsyncResource

from ..async_device import AsyncSysGenID
from ..device import AbiChoice, WaitResult
from ..errors import StaleGenerationError
from ..timeouts import validate_timeout
from ..uapi import Abi
from .callbacks import maybe_await
from .registry import Registry, RegistryError, WatcherEntry

__all__ = ["OrchestrationReport", "Orchestrator", "likely_cause_of_timeout"]

Callback = Callable[[int], "Awaitable[None] | None"]

_SIGNED_TOP = 2**31 - 1


def likely_cause_of_timeout(generation: int) -> str | None:
    """What, besides a slow watcher, can keep WAIT_WATCHERS from ever succeeding at ``generation``.

    On both shipped drivers (Amazon Linux's v8 driver and the v4 patch), ``trigger(2147483647)``
    at 2147483647 leaves the counter where it is (their arithmetic is a signed int's) and
    counts every tracked watcher as outdated, those at 2147483647 included; none of them can
    take itself off that count, not by acknowledging, not by closing, until the next change.
    A tool that forces "the maximum" does exactly that. On v4 the count then names files
    that are not late at all.
    """
    if generation == _SIGNED_TOP:
        return (
            f"at generation {generation}, a trigger whose minimum is {generation} changes nothing on the "
            "shipped drivers (Amazon Linux's v8 driver and the v4 patch), yet counts every watcher as "
            "outdated, even those that acknowledged, until the next change: trigger once more "
            "(sysgenid-async trigger) to clear it"
        )
    return None


@dataclass(frozen=True)
class OrchestrationReport:
    """What one restore looked like from the orchestrator."""

    #: the generation every watcher was waited for (the last, if several arrived)
    generation: int
    #: CAUGHT_UP, or TIMED_OUT with watchers still outdated
    result: WaitResult
    #: v4: outdated watchers when the wait ended (0 when caught up); v8: None (no count)
    late_watchers: int | None
    #: how many times a newer generation arrived while waiting
    restarts: int
    #: seconds from noticing the change to the end of the wait
    elapsed: float
    #: on a timeout, a cause besides a slow watcher, when one is likely (see likely_cause_of_timeout)
    likely_cause: str | None = None
    #: on a timeout, the registered processes that had not caught up, by pid
    late_processes: tuple[WatcherEntry, ...] = ()
    #: v4, on a timeout: the late files that no registered process accounts for; v8: None
    anonymous_late: int | None = None

    @property
    def caught_up(self) -> bool:
        return self.result is WaitResult.CAUGHT_UP


class Orchestrator(AsyncResource):
    """Waits, on each generation change, until every watcher on the machine has caught up."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        timeout: float | None = 5.0,
        pause: Callback | None = None,
        resume: Callback | None = None,
        abi: AbiChoice = "auto",
        runtime_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.timeout = validate_timeout(timeout)
        self.path = path
        self.abi = abi
        #: the watcher registry that names late processes (see sysgenid_async.restore.registry)
        self.runtime_dir = runtime_dir
        self._pause = pause
        self._resume = resume
        self._handle: AsyncSysGenID | None = None

    async def __aenter__(self) -> Orchestrator:
        self._handle = AsyncSysGenID.open(self.path, abi=self.abi)
        return self

    async def aclose(self) -> None:
        """Close the device (``async with`` does it on the way out)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    @property
    def handle(self) -> AsyncSysGenID:
        if self._handle is None:
            raise RuntimeError("use 'async with Orchestrator(...)' first")
        return self._handle

    async def handle_next(self) -> OrchestrationReport:
        """Wait for the next change (or one already pending) and orchestrate it."""
        handle = self.handle
        generation = await handle.wait_for_change()
        started = time.monotonic()
        await _call(self._pause, generation)
        restarts = 0
        try:
            while True:
                try:
                    handle.ack(generation)
                except StaleGenerationError:
                    generation = await handle.wait_for_change()  # moved on before we confirmed
                    restarts += 1
                    continue
                result = await handle.wait_watchers(self.timeout)
                if result is not WaitResult.CALLER_OUTDATED:
                    break
                # A newer generation arrived while waiting: start over with it.
                generation = await handle.wait_for_change()
                restarts += 1
        finally:
            await _call(self._resume, generation)
        late = handle.outdated_watchers() if handle.abi is Abi.V4 else None
        if result is not WaitResult.TIMED_OUT:
            return OrchestrationReport(generation, result, late, restarts, time.monotonic() - started)
        named = tuple(self._late_processes(generation))
        return OrchestrationReport(
            generation, result, late, restarts, time.monotonic() - started,
            likely_cause_of_timeout(generation), named,
            None if late is None else max(0, late - len(named)),
        )

    def _late_processes(self, generation: int) -> list[WatcherEntry]:
        try:
            entries = Registry(self.runtime_dir).entries()
        except RegistryError:  # no registry (no watcher announced itself), or not ours to read
            return []
        return [e for e in entries if e.late_for(generation)]

    def __aiter__(self) -> Orchestrator:
        return self

    async def __anext__(self) -> OrchestrationReport:
        """``async for report in orchestrator``: every change, for ever (inside ``async with``)."""
        return await self.handle_next()


async def _call(callback: Callback | None, generation: int) -> None:
    if callback is not None:
        await maybe_await(callback(generation))
