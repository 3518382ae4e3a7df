"""The flavours against what the genuine shipped drivers were seen to do (a CI guard).

Each row below is an observation, not a derivation: a transition seen on Amazon Linux's
v8 driver and on the v4 patch, each built unchanged and loaded in the guest (Linux 6.1)
with the device suite run against it (``nox -s kernel -- --kernel host --module DIR
--no-abi-param --driver amazon-linux|v4-patch``). The first rows come from tests that
passed there; the rows at 2147483647 with a minimum of 2**31 or more are the transitions
that run found the flavours getting wrong. The flavours (simulator and kernel module), and
the reference model of tests/device_model.py, must give the same answers; where a row
disagrees with one of them, the flavour is wrong, not the row.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator

import pytest

from backends import Backend, start_low
from device_model import DeviceModel
from sysgenid_async import uapi
from sysgenid_async.rawfile import RawFile
from sysgenid_async.testing import Flavour, Quirk
from sysgenid_async.uapi import Abi

INT_MAX = 2**31 - 1

#: (generation before, trigger's minimum, generation after), seen on both genuine drivers.
OBSERVED = [
    (0, 2**31 + 5, 1),  # below 2147483647 a minimum of 2**31 or more is ignored
    (1, 2**32 - 1, 2),
    (2, 6, 6),
    (6, INT_MAX, INT_MAX),
    (INT_MAX, 0, 0),  # after 2147483647 comes 0
    (0, INT_MAX, INT_MAX),
    (INT_MAX, 6, 6),  # back to a value the counter had
    (2**31 - 2, 0, INT_MAX),
    (INT_MAX, 2**31, 2**31),  # at 2147483647 the same minimum is taken as it is
    (INT_MAX, 2**32 - 2, 2**32 - 2),
    (INT_MAX, INT_MAX, INT_MAX),  # no change: and every watcher counted (below)
]

SHIPPED = [Flavour.AMAZON_LINUX, Flavour.V4_PATCH]


def _bring_to(backend: Backend, generation: int) -> None:
    """Every start in the table is at most 2147483647: from 0, one trigger reaches it."""
    start_low(backend)
    if generation:
        assert backend.bump(generation) == generation


@pytest.mark.parametrize("flavour", SHIPPED)
@pytest.mark.parametrize(("before", "minimum", "after"), OBSERVED)
def test_the_model_gives_what_was_observed(flavour: Flavour, before: int, minimum: int, after: int) -> None:
    model = DeviceModel(flavour.abi or Abi.V4, before, flavour.quirks)
    model.trigger(minimum)
    assert model.generation == after


@pytest.mark.with_quirk(Quirk.SIGNED_COUNTER)
@pytest.mark.parametrize(("before", "minimum", "after"), OBSERVED)
def test_the_flavour_gives_what_was_observed(backend: Backend, before: int, minimum: int, after: int) -> None:
    _bring_to(backend, before)
    assert backend.bump(minimum) == after, f"at {before}, trigger({minimum})"


@pytest.fixture
def files(backend: Backend) -> Iterator[list[RawFile]]:
    opened: list[RawFile] = []
    yield opened
    for raw in opened:
        raw.close()


@pytest.mark.with_quirk(Quirk.RECOUNT_ALL_TRACKED)
def test_a_trigger_that_changes_nothing_counts_every_watcher(backend: Backend, files: list[RawFile]) -> None:
    """Seen on both drivers: after trigger(2147483647) at 2147483647, watchers that had all
    acknowledged count as outdated (on the v4 patch: every open file of the device)."""
    _bring_to(backend, INT_MAX)
    for _ in range(3):
        raw = backend.open_raw(readonly=False, nonblock=True)
        files.append(raw)
        if backend.abi is Abi.V8:
            raw.ioctl(uapi.SYSGENID_V8_SET_WATCHER_TRACKING, 1)
    caller = files[0]
    assert caller.ioctl(backend.abi.wait_watchers_request, 10) == 0, "all caught up before"
    caller.ioctl(backend.abi.trigger_request, INT_MAX)  # from a file of the count, not a passing one
    assert backend.generation == INT_MAX
    for raw in files:
        assert raw.write(INT_MAX.to_bytes(4, sys.byteorder)) == 4, "still the current value"
    timed_out = errno.EINTR if backend.abi is Abi.V4 else errno.ETIME
    with pytest.raises(OSError, match=rf"^\[Errno {timed_out}\]"):
        caller.ioctl(backend.abi.wait_watchers_request, 10)
    if backend.abi is Abi.V4:
        assert caller.ioctl(uapi.SYSGENID_GET_OUTDATED_WATCHERS, 0) == backend.open_files()
    backend.bump()  # the next real change counts afresh
    for raw in files:
        assert raw.write(backend.generation.to_bytes(4, sys.byteorder)) == 4
    assert caller.ioctl(backend.abi.wait_watchers_request, 10) == 0
