"""One kernel watcher per process: the one runner of its registry's hooks, and the feed of its subscribers.

    async with restore_watcher():      # in the service's main, or an ASGI lifespan
        await serve()

- Its task is the only place where its registry's hooks run: restore passes on each change of
  generation, before-snapshot and resume passes when the control socket asks (docs/lifecycle.md),
  one at a time (:mod:`~sysgenid_async.restore.gate`). Requests and threads wait for it.
- A newer generation cancels the running pass at its next checkpoint; the next pass is the newer one's.
- After the first pass over the hooks (succeeded or not: ``last_error`` tells), every subscriber
  (:meth:`RestoreWatcher.subscribe`) is offered the generation.
- It acknowledges to the kernel only once every hook succeeded and every subscriber has handled
  the generation (its loop body finished and the next iteration began); until then the process
  shows as outdated, so an orchestrator sees it. A subscriber that stops (``break``, an error,
  ``close()``) no longer counts, as a closed file no longer counts for the kernel.
- Retries: after a failed pass, the failed phase and every later one run again after
  ``initial_delay`` seconds, doubling up to ``max_delay``, up to ``max_attempts`` times (default:
  for ever); a newer generation ends them. Once they are used up, the generation stays
  unacknowledged until the next one.
- One watcher per registry: a second one is refused with
  :class:`~sysgenid_async.restore.RestoreWatcherRunningError`.
- It announces its process in the machine's watcher registry (``announce=False`` to stay out)
  and, under systemd with ``NOTIFY_SOCKET``, sends ``RELOADING=1`` when a change arrives and
  ``READY=1`` once it acknowledged it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, TypedDict, TypeVar

import anyio
from anyio.abc import AsyncResource
from typing_extensions import Unpack

if TYPE_CHECKING:
    import anyio.abc

from ..async_device import AsyncSysGenID, moved_on, running_loop
from ..device import AbiChoice
from ..timeouts import Deadline
from .hooks import RestoreHooks, restore_hooks
from .lifecycle import ProcessLifecycle, plain_errors
from .passes import LifecyclePass, PassOutcome, cancelled_when
from .phases import HookKind, RestoreHooksError
from .registry import RUNTIME_DIR_VARIABLE, Registry, RegistryError, RegistryPermissionError, service_name
from .retry import RetryPolicy, retry
from .runner import run_lifecycle, run_restore

__all__ = ["RestoreWatcher", "Subscription", "restore_watcher"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Subscription(AsyncResource):
    """One consumer of the process watcher: ``async for generation in subscription``.

    Like :func:`~sysgenid_async.watch`: a generation counts as handled when the next
    iteration starts; leaving the loop (``break``, an error) unsubscribes, and from then on
    this subscriber is not waited for. Generations that pile up coalesce to the latest.
    """

    # One per subscriber, possibly thousands: no per-instance dict, no event of its own (they
    # all wait on the watcher's one event of offers).
    __slots__ = ("__weakref__", "_closed", "_delivered", "_owed", "_watcher")

    def __init__(self, watcher: RestoreWatcher) -> None:
        self._watcher = watcher
        self._delivered: int | None = None
        #: The watcher waits for this subscriber to handle the generation it offered last.
        self._owed = False
        self._closed = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> int:
        watcher = self._watcher
        if self._owed and self._delivered == watcher._offered:
            watcher._paid(self)  # the body ran for the offered generation
        while True:
            if self._closed:
                raise StopAsyncIteration
            current = watcher._offered
            if current is not None and current != self._delivered:
                self._delivered = current
                return current
            await watcher._offers.wait()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._watcher._unsubscribe(self)

    async def aclose(self) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()


class WatcherOptions(TypedDict, total=False):
    """A restore watcher's options besides the device path (see :class:`RestoreWatcher`)."""

    hooks: RestoreHooks | None
    abi: AbiChoice
    retry: RetryPolicy | None
    service: str | None
    announce: bool
    runtime_dir: str | os.PathLike[str] | None


class RestoreWatcher:
    """The process's kernel watcher: runs the hooks, feeds the subscribers, acknowledges.

    Start it with :func:`restore_watcher` or ``await task_group.start(watcher.run)``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        hooks: RestoreHooks | None = None,
        abi: AbiChoice = "auto",
        retry: RetryPolicy | None = None,
        service: str | None = None,
        announce: bool = True,
        runtime_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = path
        self.hooks = restore_hooks if hooks is None else hooks
        self.abi = abi
        self.retry = RetryPolicy() if retry is None else retry
        #: the name this process announces in the watcher registry
        self.service = service_name(service)
        self.announce = announce
        self.runtime_dir = runtime_dir
        #: this process's part in the snapshot lifecycle (made when the watcher starts)
        self.lifecycle: ProcessLifecycle | None = None
        self._handle: AsyncSysGenID | None = None
        self._opened: AsyncSysGenID | None = None  # opened ahead by restore_watcher()
        self._attached = False
        # Weak: a subscription dropped by its loop (break, error) must be freed, and so closed.
        # A plain weak reference per subscriber, by id (a WeakSet's references carry a callback
        # each, which costs a third of a subscriber's memory); dead ones are dropped at offers.
        self._subscribers: dict[int, weakref.ref[Subscription]] = {}
        # The subscribers' side, all on the watcher's loop: the generation offered last, the
        # event they wait on for the next offer (set and replaced by each offer and by a
        # close), how many of those offered to still owe it, and the event set when none does.
        self._offered: int | None = None
        self._offers: _Event = anyio.Event()
        self._owed = 0
        self._progress = anyio.Event()
        self._interrupt: anyio.CancelScope | None = None  # the runner's current wait, which a request ends
        #: The last generation acknowledged to the kernel.
        self.acknowledged: int | None = None
        #: The last hook failures, or None when the last generation's hooks all succeeded.
        self.last_error: RestoreHooksError | None = None

    @property
    def handle(self) -> AsyncSysGenID:
        if self._handle is None:
            raise RuntimeError("the restore watcher is not running")
        return self._handle

    @property
    def generation(self) -> int:
        """The current generation, from the watcher's mapped page (no syscall)."""
        return self.handle.generation

    def subscribe(self) -> Subscription:
        """A new consumer of generation changes; the watcher acks only once it handled them."""
        subscription = Subscription(self)
        self._subscribers[id(subscription)] = weakref.ref(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        """A subscription has closed: it is no longer waited for, and its task (which may be
        waiting for an offer) wakes and ends."""
        self._subscribers.pop(id(subscription), None)
        if subscription._owed:
            self._paid(subscription)
        self._wake_subscribers()

    def _paid(self, subscription: Subscription) -> None:
        subscription._owed = False
        self._owed -= 1
        if self._owed == 0:
            self._progress.set()

    def _live_subscribers(self) -> list[Subscription]:
        """The subscriptions still referenced (the references of collected ones are dropped)."""
        live = []
        for key, reference in list(self._subscribers.items()):
            subscription = reference()
            if subscription is None:
                del self._subscribers[key]
            else:
                live.append(subscription)
        return live

    def _wake_subscribers(self) -> None:
        offers, self._offers = self._offers, _new_event()
        offers.set()

    def _start_lifecycle(self, handle: AsyncSysGenID) -> ProcessLifecycle:
        """The registry is checked here, before any task starts: a bad directory raises plainly."""
        if self.lifecycle is None:
            registry = self._registry() if self.announce else None
            self.lifecycle = ProcessLifecycle(self.hooks, registry, self.service, lambda: handle.generation)
        return self.lifecycle

    def _registry(self) -> Registry | None:
        try:
            return Registry(self.runtime_dir, create=True)
        except RegistryPermissionError:
            raise  # a directory others can write to is never used, nor silently passed over
        except RegistryError as exc:
            if self.runtime_dir is not None or os.environ.get(RUNTIME_DIR_VARIABLE):
                raise  # asked for by name: it must work
            # The default place is missing (no XDG_RUNTIME_DIR, no /run): restores are still
            # handled; only prepare and the naming of late watchers miss this process.
            logger.warning("restore watcher not announced in the watcher registry: %s", exc)
            return None

    def _attach(self, handle: AsyncSysGenID) -> None:
        if not self._attached:
            self.hooks.gate.attach(self, handle.device)
            self._attached = True

    def _detach(self) -> None:
        if self._attached:
            self.hooks.gate.detach(self)
            self._attached = False

    async def run(self, *, task_status: anyio.abc.TaskStatus[RestoreWatcher] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled."""
        handle = self._opened or AsyncSysGenID.open(self.path, abi=self.abi)
        self._opened = None
        async with handle:
            try:
                lifecycle = self._start_lifecycle(handle)
                self._attach(handle)
                self._handle = handle
                with plain_errors():
                    async with anyio.create_task_group() as tasks:
                        await tasks.start(lifecycle.serve)
                        task_status.started(self)
                        try:
                            await self._watch(handle, lifecycle)
                        finally:
                            tasks.cancel_scope.cancel()
            finally:
                self._detach()
                self._handle = None
                self.lifecycle = None
                for subscription in self._live_subscribers():
                    subscription.close()

    async def _watch(self, handle: AsyncSysGenID, lifecycle: ProcessLifecycle) -> None:
        lifecycle.wake_runner = self._wake_for_request
        if self.hooks.gate.needs_restore(handle.generation):
            # The process lived through a restore before this watcher started (a bound
            # value saw the old generation): its hooks have not run for this one.
            await self._handle_generation(handle, lifecycle, handle.generation)
        while True:
            generation = await self._serving_requests(lifecycle, handle.wait_for_change)
            await self._handle_generation(handle, lifecycle, generation)

    async def _handle_generation(self, handle: AsyncSysGenID, lifecycle: ProcessLifecycle, generation: int) -> None:
        lifecycle.restoring(generation)
        outcome = await self._restore_pass(handle, generation)
        if outcome is PassOutcome.SUPERSEDED:
            return  # a newer generation arrived: start over with it
        self._offer(generation)  # after the first pass, whatever it gave
        hooks_ok = outcome is PassOutcome.SUCCEEDED or await self._retry(handle, lifecycle, generation)
        if hooks_ok and await self._subscribers_done(handle, lifecycle, generation):
            if handle.generation == generation:
                lifecycle.will_acknowledge(generation)
            if handle.ack_unless_moved_on(generation):  # else a newer one came: handled next
                self.acknowledged = generation
                logger.debug("generation %d acknowledged", generation)
                lifecycle.acknowledged_to_kernel(generation)
            return
        # Stay outdated until the next generation, so an orchestrator sees the failure.
        await self._serving_requests(lifecycle, lambda: moved_on(handle, generation, None))

    async def _restore_pass(self, handle: AsyncSysGenID, generation: int) -> PassOutcome:
        """One restore pass by the gate's runner (this task); ``last_error`` says how it ended."""
        gate = self.hooks.gate
        outcome, errors = await run_restore(gate, self, generation, lambda: moved_on(handle, generation, None))
        if outcome is not PassOutcome.SUPERSEDED:
            self.last_error = RestoreHooksError(generation, errors) if errors else None
        return outcome

    async def _retry(self, handle: AsyncSysGenID, lifecycle: ProcessLifecycle, generation: int) -> bool:
        """After a failed pass: again from the failed phase, per the policy; True once every hook succeeded."""

        async def pass_again() -> bool | None:
            outcome = await self._restore_pass(handle, generation)
            return None if outcome is PassOutcome.SUPERSEDED else outcome is PassOutcome.SUCCEEDED

        def failed(_attempt: int, next_delay: float | None) -> None:
            assert self.last_error is not None
            lifecycle.failed(self.last_error)
            if next_delay is None:
                logger.error("restore hooks still failing for generation %d: left unacknowledged", generation)

        def pause(delay: float) -> Awaitable[bool]:
            return self._serving_requests(lifecycle, _moved_on_within(handle, generation, Deadline(delay)))

        return await retry(self.retry, pass_again, pause, failed)

    async def _lifecycle_pass(self, kind: HookKind, generation: int, budget: float | None) -> LifecyclePass:
        handle = self.handle
        return await run_lifecycle(self.hooks.gate, self, kind, generation, budget,
                                   lambda: moved_on(handle, generation, None))

    async def _serving_requests(self, lifecycle: ProcessLifecycle, wait: Callable[[], Awaitable[T]]) -> T:
        """Await ``wait()``, running the prepare and resume requests that arrive meanwhile:
        each ends the wait, runs, and ``wait()`` is awaited again (so it must be restartable)."""
        while True:
            await lifecycle.run_requests(self._lifecycle_pass)
            with anyio.CancelScope() as scope:
                self._interrupt = scope
                if lifecycle.has_requests:
                    scope.cancel()
                try:
                    return await wait()
                finally:
                    self._interrupt = None

    def _wake_for_request(self) -> None:
        if self._interrupt is not None:
            self._interrupt.cancel()

    def _offer(self, generation: int) -> None:
        """Offer ``generation`` to every subscriber; each one open now owes it (a subscriber that
        stops, by break, error or close, no longer does, as a closed file no longer counts for
        the kernel)."""
        self._offered = generation
        self._progress = anyio.Event()
        owed = 0
        for subscription in self._live_subscribers():
            if not subscription._closed:
                subscription._owed = True
                owed += 1
        self._owed = owed
        if owed == 0:
            self._progress.set()
        self._wake_subscribers()

    async def _subscribers_done(self, handle: AsyncSysGenID, lifecycle: ProcessLifecycle, generation: int) -> bool:
        """True once every subscriber offered ``generation`` has handled it or stopped."""
        while True:
            progress = self._progress
            if progress.is_set():
                return True
            if handle.generation != generation:
                return False
            # A newer generation ends the wait: its hooks must not wait for a slow loop body.
            await self._serving_requests(lifecycle, _progress_or_moved_on(handle, generation, progress))


class _Event(Protocol):
    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    async def wait(self) -> object: ...


def _new_event() -> _Event:
    """An event of the running loop: asyncio's own on asyncio (anyio's wraps it, which costs every
    waiting subscriber a coroutine frame more, 192 bytes, and a call per wake-up), else anyio's."""
    loop = running_loop()
    if loop is not None and hasattr(loop, "add_reader"):
        import asyncio

        return asyncio.Event()
    return anyio.Event()


def _progress_or_moved_on(
    handle: AsyncSysGenID, generation: int, progress: anyio.Event
) -> Callable[[], Awaitable[None]]:
    """A restartable wait: until ``progress`` is set, or the device leaves ``generation``."""
    return lambda: cancelled_when(lambda: moved_on(handle, generation, None), progress.wait())


def _moved_on_within(handle: AsyncSysGenID, generation: int, deadline: Deadline) -> Callable[[], Awaitable[bool]]:
    """A restartable wait: whether the device leaves ``generation`` before ``deadline``."""
    return lambda: moved_on(handle, generation, deadline.remaining())


@contextlib.asynccontextmanager
async def restore_watcher(
    path: str | os.PathLike[str] | None = None, **options: Unpack[WatcherOptions]
) -> AsyncIterator[RestoreWatcher]:
    """Run the process's restore watcher for the duration of the block.

    The one line a service needs (``async with restore_watcher(): ...``), in its main or in
    an ASGI lifespan. It takes :class:`RestoreWatcher`'s options (``hooks``, ``abi``,
    ``retry``, ``service``, ``announce``, ``runtime_dir``). Hooks registered before it starts
    run on the first change. A second watcher on the same registry raises
    :class:`~sysgenid_async.restore.RestoreWatcherRunningError`. ``service`` names the process
    in the machine's watcher registry (default: the program's name); ``announce=False`` keeps
    it out (no entry, no control socket); ``runtime_dir`` overrides the registry directory
    (:func:`~sysgenid_async.restore.registry.runtime_dir`).
    """
    watcher = RestoreWatcher(path, **options)
    # Open, check the registry and attach before the task group, so that a missing device,
    # a bad registry directory or a second watcher raises plainly, not in an ExceptionGroup.
    handle = watcher._opened = AsyncSysGenID.open(path, abi=watcher.abi)
    try:
        watcher._start_lifecycle(handle)
        watcher._attach(handle)
    except BaseException:
        handle.close()
        raise
    try:
        async with anyio.create_task_group() as tasks:
            await tasks.start(watcher.run)
            try:
                yield watcher
            finally:
                tasks.cancel_scope.cancel()
    finally:
        if watcher._attached:  # the task never ran
            watcher._detach()
            handle.close()
