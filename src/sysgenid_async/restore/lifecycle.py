"""A watcher process's part in the snapshot lifecycle: its registry entry, its control
socket, prepare and resume, and its systemd notifications.

States (the ``state`` of its entry): ``ready`` → (a restore) ``restoring`` → ``ready`` or
``failed``; ``ready`` → (``prepare``) ``preparing`` → ``prepared`` or, when a hook failed or
the budget left one unrun, ``failed``; ``prepared`` or a failed prepare → (``resume``)
``resuming`` → ``ready`` (or ``failed``); or, from any of them, a restore: the restore hooks
run as for any restore, and count as the resume (the resume hooks do not run).

Prepare and resume are requests to the restore watcher: its task runs their passes, one at
a time with the restore passes (the gate's one turn); a connection only waits for the reply.
A restore cancels a before-snapshot or resume pass at its next checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from . import control
from .hooks import RestoreHooks
from .passes import LifecyclePass
from .phases import HookError, HookKind, RestoreHooksError
from .readiness import reloading_state, sd_notify
from .registry import Registry, WatcherEntry, WatcherState, process_start_time

if sys.version_info < (3, 11):  # pragma: no cover - the backport on 3.10
    from exceptiongroup import BaseExceptionGroup

__all__ = ["ProcessLifecycle", "plain_errors"]

logger = logging.getLogger(__name__)

# Instance numbers of this process's running watchers (one per hook registry, usually one).
_instances: set[int] = set()
_instances_lock = threading.Lock()

#: The before-snapshot pass's budget when the request names none, in seconds.
DEFAULT_PREPARE_SECONDS = 30.0
#: The first and the longest pause before the control server is started again after an error.
CONTROL_RESTART_SECONDS = (0.1, 30.0)
#: The first and the longest pause before the registry entry is written again after a failed write.
ANNOUNCE_RETRY_SECONDS = (0.05, 5.0)


#: How the runner runs a lifecycle pass: ``run(kind, generation, budget)``.
PassRunner = Callable[[HookKind, int, "float | None"], Awaitable[LifecyclePass]]


def _hook_errors(errors: list[HookError]) -> list[dict[str, str]]:
    return [{"hook": e.hook.name, "error": repr(e.__cause__)} for e in errors]


@contextlib.contextmanager
def plain_errors() -> Iterator[None]:
    """Re-raise a lone error out of a task group as itself (trio and anyio group every error)."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            raise group.exceptions[0] from None
        raise


class _Listening:
    """The control server's task status: the first start is the watcher's, every start calls ``on_start``."""

    def __init__(self, status: anyio.abc.TaskStatus[None], on_start: Callable[[], None]) -> None:
        self._status = status
        self._on_start = on_start
        self.once = False

    def started(self, value: None = None) -> None:
        if not self.once:
            self.once = True
            self._status.started()
        self._on_start()


class _Request:
    """A prepare or resume asked on the control socket, waiting for the runner."""

    __slots__ = ("abandoned", "done", "op", "reply", "timeout")

    def __init__(self, op: str, timeout: float | None) -> None:
        self.op = op
        self.timeout = timeout
        self.done = anyio.Event()
        self.abandoned = False  # the asking connection went away before the runner took it
        self.reply: dict[str, Any] = {"ok": False, "error": "the restore watcher stopped before it ran the request"}


class ProcessLifecycle:
    """One per restore watcher: what it announces and what it answers on its socket."""

    def __init__(
        self,
        hooks: RestoreHooks,
        registry: Registry | None,
        service: str,
        generation: Callable[[], int],
        *,
        notify: bool = True,
    ) -> None:
        self.hooks = hooks
        self.registry = registry
        self.service = service
        self.pid = os.getpid()
        self._start_time = process_start_time(self.pid) or 0
        self.instance = 0
        self._generation = generation
        self._notify = notify
        self._requests: deque[_Request] = deque()  # filled by connections, emptied by the runner
        self._unannounced = anyio.Event()  # set while the entry on disk is out of date
        #: Called when a request arrives: the runner (the restore watcher) sets it to wake itself.
        self.wake_runner: Callable[[], None] = lambda: None
        self.state: WatcherState = WatcherState.READY
        #: "up" while the control socket is served, "down" while it is being started again
        self.control = "up"
        self.acknowledged: int | None = None
        self.failing_hook: str | None = None
        self.error: str | None = None
        #: the generation the before-snapshot hooks ran for, while prepared
        self.prepared_at: int | None = None

    @property
    def socket_path(self) -> Path | None:
        return None if self.registry is None else self.registry.socket_path(self.pid, self.instance)

    def entry(self) -> WatcherEntry:
        return WatcherEntry(
            pid=self.pid, start_time=self._start_time, service=self.service, acknowledged=self.acknowledged,
            state=self.state, failing_hook=self.failing_hook, error=self.error,
            socket=str(self.socket_path or ""), instance=self.instance, control=self.control,
        )

    def _announce(self, state: WatcherState) -> None:
        self.state = state
        if self.registry is not None:
            try:
                self.registry.announce(self.entry())
            except OSError as exc:  # a full or vanished directory must not stop the restore
                if not self._unannounced.is_set():
                    logger.error("cannot update the watcher registry at %s: %s; trying again", self.registry.path, exc)
                self._unannounced.set()  # the re-announcer writes it again (out of descriptors, say)
            else:
                if self._unannounced.is_set():
                    logger.warning("the watcher registry entry is up to date again")
                    self._unannounced = anyio.Event()

    async def _announce_again(self) -> None:
        """Write the entry again after a write failed, pausing longer each time, until one succeeds:
        a stale entry would hold ``wait-ready`` back."""
        while True:
            await self._unannounced.wait()
            pause = ANNOUNCE_RETRY_SECONDS[0]
            while self._unannounced.is_set():
                await anyio.sleep(pause)
                pause = min(pause * 2, ANNOUNCE_RETRY_SECONDS[1])
                self._announce(self.state)

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Announce, and answer the control socket until cancelled; then withdraw."""
        if self.registry is None:
            task_status.started()
            return
        with _instances_lock:
            self.instance = next(i for i in range(len(_instances) + 1) if i not in _instances)
            _instances.add(self.instance)
        try:
            path = self.registry.socket_path(self.pid, self.instance)
            control.check_socket_path(path)
            self.acknowledged = self._generation()  # a fresh file starts up to date
            self._announce(self.state)
            with plain_errors():
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._announce_again)
                    await self._serve_control(path, task_status)
        finally:
            self.registry.withdraw(self.pid, self.instance)
            with _instances_lock:
                _instances.discard(self.instance)

    async def _serve_control(self, path: Path, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The control server, started again after an error of its own (it is best-effort; the
        restores go on meanwhile, and the entry says ``control: down``). A server that never
        started raises: the configuration is wrong."""
        listening = _Listening(task_status, self._control_up)
        pause = CONTROL_RESTART_SECONDS[0]
        while True:
            try:
                await control.serve(path, self.dispatch, task_status=listening)
            except Exception as exc:
                if not listening.once:
                    raise
                logger.error("control channel failed (%r); starting it again in %g s", exc, pause)
            self.control = "down"
            self._announce(self.state)
            await anyio.sleep(pause)
            pause = min(pause * 2, CONTROL_RESTART_SECONDS[1])

    def _control_up(self) -> None:
        if self.control != "up":
            logger.warning("control channel: serving again")
            self.control = "up"
            self._announce(self.state)

    async def dispatch(self, op: str, message: Mapping[str, Any]) -> dict[str, Any]:
        if op in ("prepare", "resume"):
            return await self._ask_runner(op, message.get("timeout"))
        return {"ok": True, **self.status()}

    def status(self) -> dict[str, Any]:
        return {"pid": self.pid, "service": self.service, "state": self.state, "acknowledged": self.acknowledged,
                "prepared_at": self.prepared_at, "control": self.control}

    async def _ask_runner(self, op: str, timeout: float | None) -> dict[str, Any]:
        if self._requests:
            return {"ok": False, **self.status(), "error": f"busy: a {self._requests[0].op} is queued; try again"}
        request = _Request(op, timeout)
        self._requests.append(request)
        self.wake_runner()
        try:
            await request.done.wait()
        finally:
            request.abandoned = True  # if the runner has not taken it yet, it never will
        return request.reply

    @property
    def has_requests(self) -> bool:
        return bool(self._requests)

    async def run_requests(self, run: PassRunner) -> None:
        """The runner's side: answer the queued prepare and resume requests, one at a time."""
        while self._requests:
            request = self._requests.popleft()
            if request.abandoned:
                continue
            try:
                if request.op == "prepare":
                    request.reply = await self._prepare(run, request.timeout)
                else:
                    request.reply = await self._resume(run, request.timeout)
            finally:
                request.done.set()

    async def _prepare(self, run: PassRunner, timeout: float | None) -> dict[str, Any]:
        """Run the before-snapshot hooks, connections first; the reply for the control channel."""
        if self.state == WatcherState.PREPARED:
            return {"ok": True, **self.status(), "note": "already prepared"}
        generation = self._generation()
        self._announce(WatcherState.PREPARING)
        budget = DEFAULT_PREPARE_SECONDS if timeout is None else timeout
        result = await run(HookKind.BEFORE_SNAPSHOT, generation, budget)
        if result.superseded:
            # Restored from a snapshot taken mid-prepare: this is a clone now; its restore
            # hooks run next and count as the resume.
            self.prepared_at = None
            self._announce(WatcherState.RESTORING)
            return self._reply(result, "a restore happened during prepare: the restore hooks run instead")
        self.prepared_at = generation  # even after a failure: resume may undo what ran
        return self._settle(result, WatcherState.PREPARED, "before-snapshot")

    async def _resume(self, run: PassRunner, timeout: float | None) -> dict[str, Any]:
        """Run the resume hooks after a prepare (succeeded or failed) that no restore followed."""
        if self.prepared_at is None:
            return {"ok": False, **self.status(), "error": f"not prepared (state {self.state}): nothing to resume"}
        self._announce(WatcherState.RESUMING)
        result = await run(HookKind.RESUME, self.prepared_at, timeout)
        if result.superseded:
            self.prepared_at = None
            self._announce(WatcherState.RESTORING)
            return self._reply(result, "a restore happened during resume: the restore hooks run instead")
        caught_up = self.acknowledged == self._generation()
        reply = self._settle(result, WatcherState.READY if caught_up else WatcherState.RESTORING, "resume")
        if reply["ok"]:
            self.prepared_at = None
            reply["prepared_at"] = None
        return reply

    def _settle(self, result: LifecyclePass, success: WatcherState, kind: str) -> dict[str, Any]:
        """The state and the reply after a lifecycle pass that no restore interrupted."""
        if not result.errors and not result.not_run:
            self.failing_hook = self.error = None
            self._announce(success)
            return self._reply(result, None)
        if result.errors:
            first = result.errors[0]
            self.failing_hook, self.error = first.hook.name, repr(first.__cause__)
        else:
            self.failing_hook, self.error = result.not_run[0].name, "not run: the pass ran out of time"
        self._announce(WatcherState.FAILED)
        problems = [f"{len(result.errors)} {kind} hook(s) failed"] if result.errors else []
        if result.not_run:
            problems.append(f"{len(result.not_run)} not run (the pass ran out of time)")
        return self._reply(result, "; ".join(problems))

    def _reply(self, result: LifecyclePass, error: str | None) -> dict[str, Any]:
        reply: dict[str, Any] = {"ok": error is None, **self.status(), "errors": _hook_errors(result.errors),
                                 "not_run": [hook.name for hook in result.not_run]}
        if error is not None:
            reply["error"] = error
        return reply

    # The restore watcher's side.

    def restoring(self, generation: int) -> None:
        """A new generation arrived: the restore counts as the resume of any prepare."""
        self.prepared_at = None
        self._announce(WatcherState.RESTORING)
        self._systemd(reloading_state())

    def failed(self, error: RestoreHooksError) -> None:
        first = error.exceptions[0]
        assert isinstance(first, HookError)
        self.failing_hook = first.hook.name
        self.error = repr(first.__cause__)
        self._announce(WatcherState.FAILED)

    def will_acknowledge(self, generation: int) -> None:
        """Announced before the kernel hears it: an entry never claims less than the kernel knows."""
        self.acknowledged = generation
        self.failing_hook = self.error = None
        self._announce(WatcherState.READY)

    def acknowledged_to_kernel(self, generation: int) -> None:
        self._systemd("READY=1")

    def _systemd(self, state: str) -> None:
        if self._notify:
            try:
                sd_notify(state)
            except OSError as exc:
                logger.error("systemd notification failed: %s", exc)
            except Exception as exc:  # ChannelError: a bad NOTIFY_SOCKET must not stop the restore
                logger.error("%s", exc)
