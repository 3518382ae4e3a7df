"""Retrying a failed step for one generation: the policy, and the one loop that follows it.

- A step is attempted again after each of the policy's delays (``initial_delay``, doubling up
  to ``max_delay``), up to ``max_attempts`` more times (None: until it succeeds);
- a newer generation ends the retries (the pause says so, or the attempt);
- the restore watcher retries its failed hooks with it, ``watch --exec`` a failed command.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from ..timeouts import validate_timeout

__all__ = ["RetryPolicy", "retry"]


@dataclass(frozen=True)
class RetryPolicy:
    """How failed hooks are retried for the same generation."""

    initial_delay: float = 1.0
    max_delay: float = 60.0
    factor: float = 2.0
    #: None: retry until they succeed or a newer generation arrives
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        for name in ("initial_delay", "max_delay"):  # durations: the library's one validator first
            if validate_timeout(getattr(self, name), f"RetryPolicy's {name}") is None:
                raise ValueError(f"RetryPolicy's {name} must be a finite number of seconds")
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)):
            raise TypeError(f"RetryPolicy's factor must be a number, not {self.factor!r}")
        if not self.initial_delay > 0 or not self.max_delay >= self.initial_delay:
            raise ValueError("RetryPolicy needs 0 < initial_delay <= max_delay")
        if not self.factor >= 1:
            raise ValueError("RetryPolicy needs factor >= 1")
        if self.max_attempts is not None:
            if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
                raise TypeError(f"RetryPolicy's max_attempts must be an int or None, not {self.max_attempts!r}")
            if self.max_attempts < 0:
                raise ValueError(f"RetryPolicy needs max_attempts >= 0, or None, not {self.max_attempts!r}")

    def delays(self) -> Iterator[float]:
        delay = self.initial_delay
        attempt = 0
        while self.max_attempts is None or attempt < self.max_attempts:
            yield delay
            delay = min(delay * self.factor, self.max_delay)
            attempt += 1


async def retry(
    policy: RetryPolicy,
    attempt: Callable[[], Awaitable[bool | None]],
    pause: Callable[[float], Awaitable[bool]],
    failed: Callable[[int, float | None], None],
) -> bool:
    """After a first failed attempt, attempt again after each of ``policy``'s delays; True once one succeeds.

    - ``attempt()``: True (succeeded), False (failed again), or None (stop: a newer generation);
    - ``failed(n, next_delay)``: after the n-th failure (the first attempt's is 1), with the
      delay before the next attempt, None when none is left;
    - ``pause(delay)``: waits ``delay``; True when a newer generation came meanwhile (stop).
    """
    delays = policy.delays()
    number = 1
    while True:
        delay = next(delays, None)
        failed(number, delay)
        if delay is None or await pause(delay):
            return False
        outcome = await attempt()
        if outcome is not False:
            return bool(outcome)
        number += 1
