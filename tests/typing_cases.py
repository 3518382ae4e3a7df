"""Typing cases: what a type checker accepts and rejects in the public decorators.

Checked by ``mypy --strict`` (``nox -s typecheck``), never run. Each line marked
``# type: ignore[code]`` must be an error: strict mode warns about an unused ignore, so a
line that stops being rejected fails the type check.
"""

from __future__ import annotations

from collections.abc import Callable

from typing_extensions import assert_type

from sysgenid_async.restore import (
    AsyncGenerationBound,
    GenerationBound,
    Phase,
    RestoreHooks,
    generation_bound,
    on_before_snapshot,
    on_restore,
    on_resume,
)


def reseed(generation: int) -> None: ...


async def reconnect(generation: int) -> None: ...


def no_generation() -> None: ...


def takes_text(generation: str) -> None: ...


async def connect() -> bytes:
    return b""


hooks = RestoreHooks()

# Accepted: hook(generation), sync or async, plain or with arguments.
returned: Callable[[int], None] = on_restore(reseed)  # the function itself comes back
on_restore(reconnect)
on_restore(phase=Phase.CONNECTIONS, timeout=5)(reconnect)
hooks.register(reseed, phase=Phase.RESEED)

# Rejected: a hook that cannot be called as hook(generation).
on_restore(no_generation)  # type: ignore[type-var]
on_restore(takes_text)  # type: ignore[type-var]
on_restore(phase=Phase.RESEED)(no_generation)  # type: ignore[type-var]
hooks.register(no_generation)  # type: ignore[type-var]

# The lifecycle's other kinds are typed the same way.
closed: Callable[[int], None] = on_before_snapshot(reseed)
on_before_snapshot(phase=Phase.CONNECTIONS, timeout=5)(reconnect)
on_resume(reconnect)
hooks.before_snapshot(reseed, phase=Phase.CACHES)
on_before_snapshot(no_generation)  # type: ignore[type-var]
on_resume(phase=Phase.CONNECTIONS)(takes_text)  # type: ignore[type-var]
hooks.on_resume(no_generation)  # type: ignore[type-var]
on_before_snapshot(reseed, priority=3)
on_before_snapshot(reseed, order=3)  # type: ignore[call-overload]

# Bound values: the factory takes no argument; the value has its type.
assert_type(generation_bound(lambda: 1), GenerationBound[int])
assert_type(generation_bound(phase=Phase.RESEED)(lambda: "token"), GenerationBound[str])
assert_type(AsyncGenerationBound(connect), AsyncGenerationBound[bytes])
generation_bound(takes_text)  # type: ignore[arg-type]
GenerationBound(reseed)  # type: ignore[arg-type]
