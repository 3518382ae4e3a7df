"""The one timeout validator, the one deadline, and the errno mapping's typed operations."""

from __future__ import annotations

import errno
import math
import time

import pytest

from sysgenid_async.errors import (
    DeviceIOError,
    NotASysGenIDDeviceError,
    Operation,
    TriggerPermissionError,
    map_os_errors,
)
from sysgenid_async.timeouts import WAIT_SLICE_SECONDS, Deadline, validate_timeout
from sysgenid_async.uapi import TRIGGER_CAPABILITIES


@pytest.mark.parametrize(("value", "seconds"), [(None, None), (0, 0.0), (1, 1.0), (2.5, 2.5), (math.inf, None)])
def test_a_timeout_is_seconds_or_none(value: object, seconds: float | None) -> None:
    assert validate_timeout(value) == seconds


@pytest.mark.parametrize(
    ("value", "error"),
    [(-1, ValueError), (-0.001, ValueError), (math.nan, ValueError), ("1", TypeError), (True, TypeError),
     ([1], TypeError)],
)
def test_a_bad_timeout_is_refused_with_its_name(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"^delay must be"):
        validate_timeout(value, "delay")


def test_a_deadline_counts_down_in_slices() -> None:
    unlimited = Deadline(None)
    assert unlimited.remaining() is None and not unlimited.expired()
    assert unlimited.next_slice() == WAIT_SLICE_SECONDS and unlimited.poll_milliseconds() == -1
    spent = Deadline(0)
    assert spent.expired() and spent.remaining() == 0.0 and spent.next_slice() == 0.0
    assert spent.poll_milliseconds() == 0
    long = Deadline(60)
    assert long.timeout == 60.0
    assert long.next_slice() == WAIT_SLICE_SECONDS, "a long wait is handed out a slice at a time"
    assert 59_000 < long.poll_milliseconds() <= 60_000
    short = Deadline(0.02)
    time.sleep(0.03)
    assert short.expired() and short.remaining() == 0.0


def test_a_deadline_validates_like_everything_else() -> None:
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        Deadline(-1)
    with pytest.raises(TypeError, match="timeout must be a number"):
        Deadline("5")


def _raise(code: int) -> None:
    raise OSError(code, "boom")


def test_an_operation_decides_what_an_errno_means() -> None:
    with pytest.raises(TriggerPermissionError) as caught, map_os_errors(Operation.TRIGGER, "/dev/x"):
        _raise(errno.EPERM)
    assert " or ".join(sorted(TRIGGER_CAPABILITIES)) in str(caught.value)
    with pytest.raises(NotASysGenIDDeviceError), map_os_errors(Operation.PROBE, "/dev/x"):
        _raise(errno.ENOTTY)
    with pytest.raises(DeviceIOError, match="/dev/x: read failed"), map_os_errors(Operation.READ, "/dev/x"):
        _raise(errno.EIO)


def test_an_operation_spelled_as_a_string_is_refused() -> None:
    """A typo used to fall through to DeviceIOError silently; now it cannot be written at all."""
    with pytest.raises(TypeError, match="operation must be an Operation"):
        map_os_errors("trigerr", "/dev/x")  # type: ignore[arg-type]
