"""Callbacks that may be sync or async: hooks, orchestrator pauses, pool openers and closers."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["maybe_await"]

T = TypeVar("T")


async def maybe_await(value: T | Awaitable[T]) -> T:
    """What a callback returned: awaited when it is awaitable (an ``async def``), else as is."""
    if isinstance(value, Awaitable):
        return await value
    return value
