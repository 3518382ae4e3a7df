"""Differential, model-based testing: the reference model against the simulator and the kernel.

A hypothesis state machine opens, shares (as dup or fork would), reads, acknowledges (the
right value, a wrong one, a wrong size), polls, triggers (around 2**31 and near 2**32, and
at the current value), toggles v8
tracking, counts and waits for watchers with a short timeout, and closes, in random order.
After every step every handle's readiness and the generation must match the model in
tests/device_model.py. The same machine runs on the simulator here and on the kernel
module in the guest (fewer examples there): a divergence is a bug in one of the three.
"""

from __future__ import annotations

import errno
import os
import select
import sys
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from backends import Backend
from device_model import U32, DeviceModel
from sysgenid_async import uapi
from sysgenid_async.rawfile import KernelFile, RawFile
from sysgenid_async.testing import Quirk, SimulatedFile
from sysgenid_async.uapi import Abi

WAIT_MS = 3  # WAIT_WATCHERS's timeout: short, nobody acts meanwhile


class SharedSimFile:
    """One of several handles on a simulated open file, as dup gives: the file closes with
    the last. ``owners`` is the handle count all of them share."""

    def __init__(self, file: SimulatedFile, owners: list[int]) -> None:
        self.file = file
        self.owners = owners

    def fileno(self) -> int:
        return self.file.fileno()

    def read(self, size: int) -> bytes:
        return self.file.read(size)

    def write(self, data: bytes) -> int:
        return self.file.write(data)

    def ioctl(self, request: int, arg: int) -> int:
        return self.file.ioctl(request, arg)

    def close(self) -> None:
        self.owners[0] -= 1
        if self.owners[0] == 0:
            self.file.close()


def _errno_of(action: Callable[[], object]) -> object:
    """What the call returned, or the errno it raised."""
    try:
        return action()
    except OSError as exc:
        return exc.errno


class DeviceMachine(RuleBasedStateMachine):
    backend: Backend

    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        if Quirk.RECOUNT_ALL_TRACKED in self.backend.quirks:
            # An earlier example may have left the count stuck (closing a stuck file does not
            # take it off): a real change with no file open counts afresh, from nobody.
            self.backend.bump()
        self.model = DeviceModel(self.backend.abi, self.backend.generation, self.backend.quirks)
        self.open_handles: dict[int, RawFile | SharedSimFile] = {}

    # -- the backend side -------------------------------------------------------------------

    def _share_raw(self, handle: int) -> RawFile | SharedSimFile:
        raw = self.open_handles[handle]
        if isinstance(raw, KernelFile):
            return KernelFile(os.dup(raw.fileno()))
        if isinstance(raw, SimulatedFile):  # first share: the original becomes one of the handles
            raw = self.open_handles[handle] = SharedSimFile(raw, [1])
        assert isinstance(raw, SharedSimFile)
        raw.owners[0] += 1
        return SharedSimFile(raw.file, raw.owners)

    # -- rules ----------------------------------------------------------------------------

    @rule(target=handles, readonly=st.booleans())
    def open(self, readonly: bool) -> int:
        raw = self.backend.open_raw(readonly=readonly, nonblock=True)
        handle = self.model.open(readonly=readonly)
        self.open_handles[handle] = raw
        return handle

    @rule(target=handles, handle=handles)
    def share(self, handle: int) -> int:
        raw = self._share_raw(handle)
        new = self.model.share(handle)
        self.open_handles[new] = raw
        return new

    @rule(handle=consumes(handles))
    def close(self, handle: int) -> None:
        self.open_handles.pop(handle).close()
        self.model.close(handle)

    @rule(handle=handles, size=st.sampled_from([0, 1, 3, 4, 8, 4096]))
    def read(self, handle: int, size: int) -> None:
        raw = self.open_handles[handle]
        got = _errno_of(lambda: raw.read(size))
        expected = self.model.read(handle, size)
        if isinstance(got, bytes) and len(got) == 4:
            got = int.from_bytes(got, sys.byteorder).to_bytes(4, "little")
        assert got == expected, f"read({size}): device {got!r}, model {expected!r}"

    @rule(handle=handles)
    def ack_the_current(self, handle: int) -> None:
        self._write(handle, self.model.generation, 4)

    @rule(handle=handles, delta=st.integers(1, 3))
    def ack_a_wrong_value(self, handle: int, delta: int) -> None:
        self._write(handle, (self.model.generation + delta) % U32, 4)

    @rule(handle=handles, size=st.sampled_from([0, 1, 3, 5, 8]))
    def ack_with_a_wrong_size(self, handle: int, size: int) -> None:
        self._write(handle, self.model.generation, size)

    def _write(self, handle: int, value: int, size: int) -> None:
        data = (value.to_bytes(4, sys.byteorder) * 2)[:size]
        raw = self.open_handles[handle]
        got = _errno_of(lambda: raw.write(data))
        got = 0 if got == size else got
        expected = self.model.write(handle, value, size)
        assert got == expected, f"write({size} bytes of {value}): device {got!r}, model {expected!r}"

    # near 0, around the signed limit (2**31 - 1), and at the top of the u32 range
    @rule(minimum=st.one_of(st.just(0), st.integers(0, 50), st.integers(2**31 - 3, 2**31 + 1),
                            st.integers(U32 - 4, U32 - 1)))
    def trigger(self, minimum: int) -> None:
        self._bump(minimum)

    def _bump(self, minimum: int) -> None:
        # The kernel backend triggers through a file of its own, open for the call: a file the
        # model must know of, since a driver that recounts every watcher counts it too (and, after
        # a trigger that changed nothing, keeps counting it once it is closed).
        transient = self.model.open(readonly=False) if self.backend.kernel else None
        self.backend.bump(minimum)
        self.model.trigger(minimum)
        if transient is not None:
            self.model.close(transient)

    # the current value itself (no change at a signed counter's 2**31 - 1, or at 2**32 - 1),
    # and its neighbours
    @rule(offset=st.sampled_from([-1, 0, 1]))
    def trigger_at_the_current(self, offset: int) -> None:
        self._bump((self.model.generation + offset) % U32)

    @precondition(lambda self: self.model.abi is Abi.V8)
    @rule(handle=handles, value=st.sampled_from([0, 1, 2]))
    def set_tracking(self, handle: int, value: int) -> None:
        raw = self.open_handles[handle]
        got = _errno_of(lambda: raw.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, value))
        assert got == self.model.set_tracking(handle, value), f"SET_WATCHER_TRACKING({value}): device {got!r}"

    @precondition(lambda self: self.model.abi is Abi.V4)
    @rule(handle=handles)
    def count_outdated(self, handle: int) -> None:
        got = self.open_handles[handle].ioctl(uapi.SYSGENID_GET_OUTDATED_WATCHERS, 0)
        assert got == self.model.outdated_watchers()

    @rule(handle=handles)
    def wait_watchers(self, handle: int) -> None:
        raw = self.open_handles[handle]
        got = _errno_of(lambda: raw.ioctl(self.model.abi.wait_watchers_request, WAIT_MS))
        expected = self.model.wait_watchers(handle)
        assert got == expected, (
            f"WAIT_WATCHERS: device {_name(got)}, model {_name(expected)}"
        )

    # -- after every step ---------------------------------------------------------------------

    @invariant()
    def readiness_and_generation_agree(self) -> None:
        assert self.backend.generation == self.model.generation
        for handle, raw in self.open_handles.items():
            poller = select.poll()
            poller.register(raw.fileno(), select.POLLIN)
            ready = bool(poller.poll(0))
            assert ready == self.model.outdated(handle), f"handle {handle}: poll {ready}, model disagrees"

    def teardown(self) -> None:
        for raw in self.open_handles.values():
            raw.close()
        self.open_handles.clear()


def _name(code: object) -> object:
    return errno.errorcode.get(code, code) if isinstance(code, int) else code


def test_the_device_behaves_as_the_model_says(backend: Backend) -> None:
    machine = type("Machine", (DeviceMachine,), {"backend": backend})
    examples = 30 if backend.kernel else 200
    run_state_machine_as_test(machine, settings=settings(
        max_examples=examples, stateful_step_count=30, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow], print_blob=True,
    ))


@pytest.mark.parametrize("abi", [Abi.V4, Abi.V8])
def test_the_model_itself(abi: Abi) -> None:
    """The model's own rules, spelled out: a fixed story on each ABI."""
    model = DeviceModel(abi, U32 - 1)
    first = model.open(readonly=False)
    reader = model.open(readonly=True)
    assert not model.outdated(first) and model.read(first, 4) == errno.EAGAIN
    model.trigger(0)
    assert model.generation == U32 - 1 + 1 - U32 == 0, "the counter wraps to 0"
    assert model.outdated(first) and model.read(first, 4) == (0).to_bytes(4, "little")
    assert model.write(reader, 0) == errno.EBADF
    assert model.write(first, 7) == errno.EINVAL
    assert model.write(first, 0, size=3) == (errno.EINVAL if abi is Abi.V4 else errno.ENOBUFS)
    assert model.wait_watchers(first) == errno.EINTR, "an outdated caller cannot wait"
    assert model.write(first, 0) == 0
    shared = model.share(first)
    model.close(first)
    assert not model.outdated(shared), "the shared handle keeps the file and its acknowledgement"
    if abi is Abi.V4:
        assert model.outdated_watchers() == 1, "the read-only file is a watcher too"
        assert model.wait_watchers(shared) == errno.EINTR
    else:
        assert model.outdated_watchers() == 0, "nobody tracks on v8"
        assert model.set_tracking(reader, 1) == 0 and model.wait_watchers(shared) == errno.ETIME
        assert model.set_tracking(reader, 2) == errno.EINVAL
