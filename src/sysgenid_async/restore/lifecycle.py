"""A watcher process's part in the snapshot lifecycle: its registry entry, its control
socket, prepare and resume, and its systemd notifications.

States (the ``state`` of its entry): ``ready`` → (a restore) ``restoring`` → ``ready`` or
``failed``; ``ready`` → (``prepare``) ``preparing`` → ``prepared`` → (``resume``)
``resuming`` → ``ready``; or, from ``prepared``, a restore: the restore hooks run as for
any restore, and count as the resume (the resume hooks do not run). One step at a time:
a prepare waits for a restore's first pass over the hooks, and the other way round.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from . import control
from .hooks import HookError, HookKind, RestoreHooks, RestoreHooksError
from .readiness import reloading_state, sd_notify
from .registry import Registry, WatcherEntry, WatcherState, process_start_time

__all__ = ["ProcessLifecycle"]

logger = logging.getLogger(__name__)

# Instance numbers of this process's running watchers (one per hook registry, usually one).
_instances: set[int] = set()
_instances_lock = threading.Lock()

#: The before-snapshot pass's budget when the request names none, in seconds.
DEFAULT_PREPARE_SECONDS = 30.0


def _hook_errors(errors: list[HookError]) -> list[dict[str, str]]:
    return [{"hook": e.hook.name, "error": repr(e.__cause__)} for e in errors]


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
        self._step = anyio.Lock()  # prepare, resume and a restore's first pass: one at a time
        self.state = WatcherState.READY
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
            socket=str(self.socket_path or ""), instance=self.instance,
        )

    def _announce(self, state: str) -> None:
        self.state = state
        if self.registry is not None:
            try:
                self.registry.announce(self.entry())
            except OSError as exc:  # a full or vanished directory must not stop the restore
                logger.error("cannot update the watcher registry at %s: %s", self.registry.path, exc)

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
            await control.serve(path, self.dispatch, task_status=task_status)
        finally:
            self.registry.withdraw(self.pid, self.instance)
            with _instances_lock:
                _instances.discard(self.instance)

    async def dispatch(self, op: str, message: Mapping[str, Any]) -> dict[str, Any]:
        if op == "prepare":
            return await self.prepare(message.get("timeout"))
        if op == "resume":
            return await self.resume(message.get("timeout"))
        return {"ok": True, **self.status()}

    def status(self) -> dict[str, Any]:
        return {"pid": self.pid, "service": self.service, "state": self.state, "acknowledged": self.acknowledged,
                "prepared_at": self.prepared_at}

    async def prepare(self, timeout: float | None = None) -> dict[str, Any]:
        """Run the before-snapshot hooks, connections first; the reply for the control channel."""
        if self._step.locked():
            return {"ok": False, **self.status(), "error": f"busy: {self.state}; try again"}
        async with self._step:
            if self.state == WatcherState.PREPARED:
                return {"ok": True, **self.status(), "note": "already prepared"}
            generation = self._generation()
            self._announce(WatcherState.PREPARING)
            errors = await self.hooks.run_lifecycle(
                HookKind.BEFORE_SNAPSHOT, generation, DEFAULT_PREPARE_SECONDS if timeout is None else timeout
            )
            restored = self._generation() != generation
            if restored:
                # Restored from a snapshot taken mid-prepare: this is a clone now; its
                # restore hooks run next (the watcher waits for this step) and count as the resume.
                self.prepared_at = None
                self._announce(WatcherState.RESTORING)
            else:
                self.prepared_at = generation
                self._announce(WatcherState.PREPARED)
        reply: dict[str, Any] = {"ok": not errors and not restored, **self.status(), "errors": _hook_errors(errors)}
        if restored:
            reply["error"] = "a restore happened during prepare: the restore hooks run instead"
        elif errors:
            reply["error"] = f"{len(errors)} before-snapshot hook(s) failed"
        return reply

    async def resume(self, timeout: float | None = None) -> dict[str, Any]:
        """Run the resume hooks after a prepare that no restore followed."""
        if self._step.locked():
            return {"ok": False, **self.status(), "error": f"busy: {self.state}; try again"}
        async with self._step:
            if self.state != WatcherState.PREPARED or self.prepared_at is None:
                return {"ok": False, **self.status(), "error": f"not prepared (state {self.state}): nothing to resume"}
            errors = await self.hooks.run_lifecycle(HookKind.RESUME, self.prepared_at, timeout)
            self.prepared_at = None
            self._announce(WatcherState.READY if self.acknowledged == self._generation() else WatcherState.RESTORING)
        reply: dict[str, Any] = {"ok": not errors, **self.status(), "errors": _hook_errors(errors)}
        if errors:
            reply["error"] = f"{len(errors)} resume hook(s) failed"
        return reply

    # The restore watcher's side.

    def restore_step(self) -> anyio.Lock:
        """Held around a restore's first pass over the hooks (see the module docstring)."""
        return self._step

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
        self.failing_hook = None
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
