"""The blocking twin: same semantics with select.poll, for threads and plain code."""

from __future__ import annotations

import os
import threading

import pytest

from backends import Backend
from sysgenid_async import BlockingSysGenID, WaitResult, watch_blocking


def test_wait_for_change(backend: Backend) -> None:
    with BlockingSysGenID.open(backend.path) as handle:
        assert handle.abi is backend.abi and handle.path == backend.path
        assert handle.wait_for_change(timeout=0) is None
        assert handle.wait_for_change(timeout=0.05) is None
        bumper = threading.Timer(0.05, backend.bump)
        bumper.start()
        new = handle.wait_for_change(timeout=60)
        bumper.join()
        assert new == backend.generation == handle.generation
        handle.ack(new)
        assert handle.wait_for_change(timeout=0) is None


def test_wait_watchers(backend: Backend) -> None:
    with BlockingSysGenID.open(backend.path) as handle, BlockingSysGenID.open(backend.path) as other:
        new = backend.bump()
        assert handle.wait_watchers() is WaitResult.CALLER_OUTDATED
        handle.ack(new)
        assert handle.wait_watchers(0.05) is WaitResult.TIMED_OUT
        other.ack(new)
        assert handle.wait_watchers(5) is WaitResult.CAUGHT_UP
        if backend.abi.value == "v4":
            assert handle.outdated_watchers() == 0
        assert handle.trigger() == backend.generation


def test_watch_blocking_acknowledges_after_the_body(backend: Backend) -> None:
    seen: list[int] = []
    with watch_blocking(backend.path, timeout=0.3) as changes:
        backend.bump()
        for generation in changes:
            seen.append(generation)
            if len(seen) < 3:
                backend.bump()
    assert len(seen) == 3 and len(set(seen)) == 3, "the timeout ended the loop after the third change"


def test_close_releases_every_fd(backend: Backend) -> None:
    before = len(os.listdir("/proc/self/fd"))
    handle = BlockingSysGenID.open(backend.path)
    handle.close()
    assert len(os.listdir("/proc/self/fd")) == before, "device, mapping and wakeup fds all closed"


def test_watch_blocking_releases_the_fd_on_break(backend: Backend) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(100):
        changes = watch_blocking(backend.path)
        backend.bump()
        for _generation in changes:
            break
        del changes
    assert len(os.listdir("/proc/self/fd")) == before


def test_bad_timeouts_are_rejected(backend: Backend) -> None:
    with BlockingSysGenID.open(backend.path) as handle:
        with pytest.raises(ValueError, match="timeout"):
            handle.wait_for_change(-1)
        with pytest.raises(TypeError, match="timeout"):
            handle.wait_for_change("soon")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        watch_blocking(backend.path, timeout=-5)
