"""Generation-bound values: rebuilt after a change, and only then."""

from __future__ import annotations

import threading

import anyio
import pytest

from backends import Backend
from sysgenid_async.device import Device
from sysgenid_async.restore import AsyncGenerationBound, GenerationBound, generation_bound, restore_hooks


def test_rebuilt_only_when_the_generation_changes(backend: Backend) -> None:
    builds: list[int] = []

    def build() -> int:
        builds.append(len(builds))
        return len(builds)

    with Device.open(backend.path, watcher=False) as probe:
        value = GenerationBound(build, probe=probe)
        assert value() == 1 and value() == 1 and value.get() == 1
        backend.bump()
        assert value() == 2 and value() == 2
        assert value.rebuilds == 2
        value.invalidate()
        assert value() == 3


def test_the_decorator_uses_the_shared_probe(default_device: Backend) -> None:
    @generation_bound
    def session_token() -> object:
        return object()

    token = session_token()
    assert session_token() is token
    default_device.bump()
    assert session_token() is not token


@pytest.mark.only_abi("v4")
def test_on_v4_no_file_stays_open_behind_a_value(default_device: Backend) -> None:
    """An idle process that once read a bound value must not stay an outdated watcher."""
    value = generation_bound(object)
    before = value()
    assert default_device.open_files() == 0, "on v4 every open file is a watcher: none is kept"
    default_device.bump()
    assert default_device.open_files() == 0
    assert value() is not before, "the value still follows the generation"


@pytest.mark.only_abi("v8")
def test_on_v8_the_shared_probe_is_not_a_watcher(default_device: Backend) -> None:
    generation_bound(object)()
    probe = restore_hooks.gate.probe()
    assert isinstance(probe, Device) and not probe.watcher


def test_one_rebuild_for_many_threads(backend: Backend) -> None:
    builds: list[int] = []
    gate = threading.Barrier(8)

    def build() -> int:
        builds.append(1)
        return len(builds)

    with Device.open(backend.path, watcher=False) as probe:
        value = GenerationBound(build, probe=probe)
        value()
        backend.bump()
        results: list[int] = []

        def reader() -> None:
            gate.wait()
            results.append(value())

        threads = [threading.Thread(target=reader) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == [2] * 8 and len(builds) == 2


@pytest.mark.anyio
async def test_the_async_variant(backend: Backend) -> None:
    builds = 0

    async def connect() -> int:
        nonlocal builds
        await anyio.sleep(0.01)
        builds += 1
        return builds

    with Device.open(backend.path, watcher=False) as probe:
        value = AsyncGenerationBound(connect, probe=probe)
        async with anyio.create_task_group() as tasks:
            for _ in range(5):
                tasks.start_soon(value.get)
        assert await value.get() == 1 and value.rebuilds == 1
        backend.bump()
        assert await value.get() == 2
        value.invalidate()
        assert await value.get() == 3


def test_bad_factories() -> None:
    with pytest.raises(TypeError, match="callable"):
        GenerationBound(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        AsyncGenerationBound(None)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_running_restore_watcher_serves_as_the_probe(default_device: Backend) -> None:
    from sysgenid_async.restore import RestoreHooks, restore_watcher

    hooks = RestoreHooks()
    value = GenerationBound(object, hooks=hooks)
    value()
    async with restore_watcher(hooks=hooks) as watcher:
        watcher_device = watcher.handle.device  # the fd layer under its handle
        assert hooks.gate.probe() is watcher_device, "the watcher hands its file to its registry's values"
        assert restore_hooks.gate.probe() is not watcher_device, "not to another registry's"
        files = default_device.open_files()
        before = value()
        new = default_device.bump()
        with anyio.fail_after(30):
            while watcher.acknowledged != new:  # noqa: ASYNC110 - the watcher exposes no event
                await anyio.sleep(0.01)
        assert value() is not before
        assert default_device.open_files() == files, "the value read the watcher's page: no file of its own"
    assert hooks.gate.probe() is not watcher_device, "the watcher took its file back"
    # The watcher's page is gone: the value finds the reopened probe and still follows changes.
    during = value()
    default_device.bump()
    assert value() is not during


@pytest.mark.anyio
async def test_a_closed_explicit_probe_raises_its_typed_error(backend: Backend) -> None:
    from sysgenid_async import DeviceClosedError

    probe = Device.open(backend.path, watcher=False)
    value = GenerationBound(object, probe=probe)
    async_value = AsyncGenerationBound(_async_object, probe=probe)
    value()
    await async_value.get()
    probe.close()
    with pytest.raises(DeviceClosedError):
        value()
    with pytest.raises(DeviceClosedError):
        await async_value.get()


async def _async_object() -> object:
    return object()
