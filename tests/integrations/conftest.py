"""Fixtures for the client integrations: real servers for the session, asyncio's loops.

The clients tested here (asyncpg, redis.asyncio, aiohttp, SQLAlchemy's asyncio engine) run on
asyncio only; httpx's tests also run on trio.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import servers


@pytest.fixture(scope="session")
def pg() -> Iterator[servers.Postgres]:
    with servers.postgres() as server:
        yield server


@pytest.fixture(scope="session")
def redis_port() -> Iterator[int]:
    with servers.redis() as port:
        yield port


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param  # type: ignore[no-any-return]
