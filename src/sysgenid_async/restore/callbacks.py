"""User callbacks: hooks, factories, orchestrator pauses, pool openers: their names, their
signatures checked at registration, and their results awaited when they are async."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["callable_name", "check_callable_as", "maybe_await"]

T = TypeVar("T")


async def maybe_await(value: T | Awaitable[T]) -> T:
    """What a callback returned: awaited when it is awaitable (an ``async def``), else as is."""
    if isinstance(value, Awaitable):
        return await value
    return value


def callable_name(function: Callable[..., Any]) -> str:
    """A callable's name as a log line shows it: its qualified name without the enclosing ``<locals>``."""
    qualname = getattr(function, "__qualname__", None)
    return qualname.rsplit("<locals>.", 1)[-1] if qualname else repr(function)


def check_callable_as(function: Callable[..., Any], arguments: tuple[object, ...], how: str) -> None:
    """Refuse, when it is registered, a callable that cannot take ``arguments``; ``how`` says
    how it is called (the start of the message)."""
    import inspect  # here, not at import: it is slow to import

    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins have none: let them through
        return
    try:
        signature.bind(*arguments)
    except TypeError:
        raise TypeError(f"{how}; {callable_name(function)}{signature} cannot be") from None
