"""Timeouts: the one validator and the one deadline helper every wait in the library uses.

No event loop here: the blocking waits, the async waits and the CLI all count down the same
way, so a timeout means the same thing (and is refused for the same reasons) everywhere.
"""

from __future__ import annotations

import math
import time

__all__ = ["WAIT_SLICE_SECONDS", "Deadline", "validate_timeout"]

#: Longest single blocking wait in the kernel; a close, a cancel or a signal waits at most this long.
WAIT_SLICE_SECONDS = 0.05


def validate_timeout(value: object, name: str = "timeout") -> float | None:
    """Seconds as a float, or None for no limit (``None`` or infinity).

    A bool or a non-number is a ``TypeError``; NaN or a negative number a ``ValueError``.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 seconds, got {value}")
    return None if math.isinf(value) else float(value)


class Deadline:
    """A timeout turned into a point on the monotonic clock, counted down by every wait.

    ``Deadline(None)`` never expires. :meth:`next_slice` hands the time out in slices of at
    most :data:`WAIT_SLICE_SECONDS`, for waits that must notice a close or a signal promptly.
    """

    __slots__ = ("_at", "timeout")

    def __init__(self, timeout: object, name: str = "timeout") -> None:
        #: The validated timeout in seconds (None: no limit).
        self.timeout = validate_timeout(timeout, name)
        self._at = None if self.timeout is None else time.monotonic() + self.timeout

    def remaining(self) -> float | None:
        """Seconds left (never below 0), or None without a limit."""
        if self._at is None:
            return None
        return max(self._at - time.monotonic(), 0.0)

    def expired(self) -> bool:
        return self._at is not None and time.monotonic() >= self._at

    def next_slice(self, longest: float = WAIT_SLICE_SECONDS) -> float:
        """The next wait: what is left, but at most ``longest`` seconds."""
        left = self.remaining()
        return longest if left is None else min(left, longest)

    def poll_milliseconds(self) -> int:
        """What is left as a ``poll()`` timeout: -1 without a limit, else whole milliseconds, rounded up."""
        left = self.remaining()
        return -1 if left is None else math.ceil(left * 1000)
