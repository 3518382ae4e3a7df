"""The client integrations against the real libraries and real servers on loopback.

Each test holds a connection, has the simulated device see a restore (the restore watcher
runs the hooks), and checks with the server that the next request uses a new connection; the
before-snapshot pass (``sysgenid-async prepare``) is checked the same way.
"""

from __future__ import annotations

import http.server
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import asyncpg
import boto3
import botocore.session
import httpx
import psycopg
import pytest
import redis
import redis.asyncio
import sqlalchemy
from sqlalchemy.ext.asyncio import create_async_engine

from sysgenid_async.integrations import (
    Reopenable,
    _supported_clients,
    reconnect_on_restore,
    reopen_on_restore,
    stop_reconnecting,
)
from sysgenid_async.restore import HookKind, RestoreHooks, restore_watcher
from sysgenid_async.restore import reseed as reseed_module
from sysgenid_async.testing import SimulatedDevice

from .servers import Postgres

pytestmark = pytest.mark.anyio


async def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def restore(sim: SimulatedDevice, hooks: RestoreHooks) -> None:
    """A restore as a service meets it: the device moves on, the restore watcher runs the hooks."""
    async with restore_watcher(hooks=hooks) as watcher:
        generation = sim.bump()
        await until(lambda: watcher.acknowledged == generation)


async def prepare(hooks: RestoreHooks) -> None:
    result = await hooks.run_lifecycle(HookKind.BEFORE_SNAPSHOT, 0)
    assert result.errors == [] and result.not_run == []


def backend_alive(pg: Postgres, pid: int) -> bool:
    with psycopg.connect(pg.url(), autocommit=True) as connection:
        row = connection.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        assert row is not None
        return bool(row[0])


async def gone(pg: Postgres, pid: int) -> None:
    """The server has ended the backend of ``pid`` (the client closed its connection)."""
    await until(lambda: not backend_alive(pg, pid))


# -- SQLAlchemy ---------------------------------------------------------------------------------


async def test_sqlalchemy_engine_gets_a_new_pool(pg: Postgres, sysgenid_sim: SimulatedDevice) -> None:
    hooks = RestoreHooks()
    engine = reconnect_on_restore(sqlalchemy.create_engine(pg.url("postgresql+psycopg")), hooks=hooks)
    try:

        def backend() -> int:
            with engine.connect() as connection:
                return int(connection.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar_one())

        before = backend()
        assert backend() == before, "the pool reuses its connection"
        await restore(sysgenid_sim, hooks)
        after = backend()
        assert after != before
        await gone(pg, before)
        await prepare(hooks)
        await gone(pg, after)
    finally:
        engine.dispose()


async def test_sqlalchemy_async_engine_gets_a_new_pool(pg: Postgres, sysgenid_sim: SimulatedDevice) -> None:
    hooks = RestoreHooks()
    engine = reconnect_on_restore(create_async_engine(pg.url("postgresql+asyncpg")), hooks=hooks)
    try:

        async def backend() -> int:
            async with engine.connect() as connection:
                return int((await connection.execute(sqlalchemy.text("SELECT pg_backend_pid()"))).scalar_one())

        before = await backend()
        assert await backend() == before
        await restore(sysgenid_sim, hooks)
        assert await backend() != before
        await gone(pg, before)
    finally:
        await engine.dispose()


# -- asyncpg ------------------------------------------------------------------------------------


async def test_asyncpg_pool_replaces_its_connections(pg: Postgres, sysgenid_sim: SimulatedDevice) -> None:
    hooks = RestoreHooks()
    pool = reconnect_on_restore(await asyncpg.create_pool(pg.url(), min_size=1, max_size=1), hooks=hooks)
    try:
        before = await pool.fetchval("SELECT pg_backend_pid()")
        assert await pool.fetchval("SELECT pg_backend_pid()") == before
        await restore(sysgenid_sim, hooks)
        after = await pool.fetchval("SELECT pg_backend_pid()")
        assert after != before
        await gone(pg, before)
        await prepare(hooks)
        assert await pool.fetchval("SELECT pg_backend_pid()") != after
    finally:
        await pool.close()


async def test_an_asyncpg_connection_held_across_the_restore_is_closed_when_released(
    pg: Postgres, sysgenid_sim: SimulatedDevice
) -> None:
    hooks = RestoreHooks()
    pool = reconnect_on_restore(await asyncpg.create_pool(pg.url(), min_size=1, max_size=2), hooks=hooks)
    try:
        async with pool.acquire() as held:
            pid = await held.fetchval("SELECT pg_backend_pid()")
            await restore(sysgenid_sim, hooks)
            assert await held.fetchval("SELECT 1") == 1, "the request that held it finishes on it"
        await gone(pg, pid)
        assert await pool.fetchval("SELECT pg_backend_pid()") != pid
    finally:
        await pool.close()


# -- redis-py -----------------------------------------------------------------------------------


async def test_redis_asyncio_client_reconnects(redis_port: int, sysgenid_sim: SimulatedDevice) -> None:
    hooks = RestoreHooks()
    client = reconnect_on_restore(redis.asyncio.Redis(port=redis_port), hooks=hooks)
    observer = redis.Redis(port=redis_port)
    try:
        before = await client.client_id()
        assert await client.client_id() == before
        await restore(sysgenid_sim, hooks)
        after = await client.client_id()
        assert after != before
        assert str(before) not in {str(c["id"]) for c in observer.client_list()}
        await prepare(hooks)
        assert str(after) not in {str(c["id"]) for c in observer.client_list()}
    finally:
        await client.aclose()
        observer.close()


async def test_a_redis_command_in_flight_is_retried_on_a_new_connection(
    redis_port: int, sysgenid_sim: SimulatedDevice
) -> None:
    """The restore closes the connection under a blocked BLPOP: redis-py's default retry (6.0
    and later) sends it again on a new one, and the caller sees its normal answer."""
    hooks = RestoreHooks()
    client = reconnect_on_restore(redis.asyncio.Redis(port=redis_port), hooks=hooks)
    answers: list[object] = []
    try:
        before = await client.client_id()

        async def blocked() -> None:
            answers.append(await client.blpop(["sysgenid-test-empty"], timeout=1))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(blocked)
            await anyio.sleep(0.2)
            await restore(sysgenid_sim, hooks)
        assert answers == [None]
        assert await client.client_id() != before
    finally:
        await client.aclose()


async def test_a_sqlalchemy_connection_held_across_the_restore_is_closed_when_returned(
    pg: Postgres, sysgenid_sim: SimulatedDevice
) -> None:
    hooks = RestoreHooks()
    engine = reconnect_on_restore(create_async_engine(pg.url("postgresql+asyncpg")), hooks=hooks)
    try:
        async with engine.connect() as held:
            pid = int((await held.execute(sqlalchemy.text("SELECT pg_backend_pid()"))).scalar_one())
            await restore(sysgenid_sim, hooks)
            # the request that held it finishes on it...
            assert (await held.execute(sqlalchemy.text("SELECT 1"))).scalar_one() == 1
        # ...and once returned, it is closed rather than pooled
        await gone(pg, pid)
        async with engine.connect() as fresh:
            assert (await fresh.execute(sqlalchemy.text("SELECT pg_backend_pid()"))).scalar_one() != pid
    finally:
        await engine.dispose()


async def test_redis_sync_client_reconnects(redis_port: int, sysgenid_sim: SimulatedDevice) -> None:
    hooks = RestoreHooks()
    client = reconnect_on_restore(redis.Redis(port=redis_port), hooks=hooks)
    try:
        before = client.client_id()
        assert client.client_id() == before
        await restore(sysgenid_sim, hooks)
        assert client.client_id() != before
        assert str(before) not in {str(c["id"]) for c in client.client_list()}
    finally:
        client.close()


# -- httpx and aiohttp: rebuilt through Reopenable ---------------------------------------------


class _PeerPort(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connection

    def do_GET(self) -> None:
        body = str(self.client_address[1]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    """An HTTP/1.1 server on loopback that answers each request with the client's port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PeerPort)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("anyio_backend", [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    pytest.param(("trio", {}), id="trio"),
])
async def test_httpx_client_is_reopened(http_server: str, sysgenid_sim: SimulatedDevice) -> None:
    hooks = RestoreHooks()
    clients = reopen_on_restore(httpx.AsyncClient, hooks=hooks)
    try:
        first = await clients.start()
        port = (await first.get(http_server)).text
        assert (await clients.current.get(http_server)).text == port, "keep-alive"
        await restore(sysgenid_sim, hooks)
        assert clients.current is not first and first.is_closed
        assert (await clients.current.get(http_server)).text != port
        second = clients.current
        await prepare(hooks)
        assert second.is_closed and not clients.current.is_closed
    finally:
        await clients.aclose()
    assert clients.reopens == 2


async def test_aiohttp_session_is_reopened(http_server: str, sysgenid_sim: SimulatedDevice) -> None:
    hooks = RestoreHooks()
    sessions = reopen_on_restore(aiohttp.ClientSession, hooks=hooks)
    try:
        first = await sessions.start()
        async with first.get(http_server) as response:
            port = await response.text()
        async with sessions.use() as session, session.get(http_server) as response:
            assert await response.text() == port
        await restore(sysgenid_sim, hooks)
        assert sessions.current is not first and first.closed
        async with sessions.current.get(http_server) as response:
            assert await response.text() != port
    finally:
        await sessions.aclose()


# -- botocore -----------------------------------------------------------------------------------

CREDENTIAL_PROCESS = """
import datetime, json, pathlib, sys
counter = pathlib.Path(sys.argv[1])
count = int(counter.read_text() or 0) + 1 if counter.exists() else 1
counter.write_text(str(count))
expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
print(json.dumps({"Version": 1, "AccessKeyId": f"AKID{count}", "SecretAccessKey": "secret",
                  "SessionToken": "token", "Expiration": expires.isoformat()}))
"""


@pytest.fixture
def aws_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A profile whose credentials come from a local credential_process (temporary, 1 h): its
    counter file counts the fetches."""
    script, counter, config = tmp_path / "creds.py", tmp_path / "fetches", tmp_path / "config"
    script.write_text(CREDENTIAL_PROCESS)
    config.write_text(f"[profile clone]\ncredential_process = {sys.executable} {script} {counter}\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return counter


@pytest.mark.parametrize("library", ["botocore", "boto3"])
async def test_botocore_credentials_are_fetched_again(
    library: str, aws_profile: Path, sysgenid_sim: SimulatedDevice
) -> None:
    hooks = RestoreHooks()
    if library == "boto3":
        wrapper = reconnect_on_restore(boto3.Session(profile_name="clone"), hooks=hooks)
        session = wrapper._session
    else:
        session = reconnect_on_restore(botocore.session.Session(profile="clone"), hooks=hooks)
    await prepare(hooks)  # before any request: resolves nothing, fetches nothing
    assert not await anyio.Path(aws_profile).exists()
    client = session.create_client("sts", region_name="us-east-1")
    credentials = session.get_credentials()
    assert credentials.get_frozen_credentials().access_key == "AKID1"
    assert credentials.get_frozen_credentials().access_key == "AKID1", "cached for an hour"
    await restore(sysgenid_sim, hooks)
    assert await anyio.Path(aws_profile).read_text() == "1", "the hook marks them expired; it makes no request"
    assert credentials.get_frozen_credentials().access_key == "AKID2"
    assert session.get_credentials() is credentials, "the object clients hold is the one refreshed"
    client.close()


async def test_static_botocore_credentials_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSTATIC")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    hooks = RestoreHooks()
    session = reconnect_on_restore(botocore.session.Session(), hooks=hooks)
    credentials = session.get_credentials()
    await prepare(hooks)
    assert session.get_credentials() is credentials and credentials.access_key == "AKIDSTATIC"


async def test_a_botocore_without_the_attribute_fails_the_hook_loudly(aws_profile: Path) -> None:
    hooks = RestoreHooks()
    session = reconnect_on_restore(botocore.session.Session(profile="clone"), hooks=hooks)
    credentials = session.get_credentials()
    del credentials._expiry_time  # as a botocore release that renamed it would be
    errors = (await hooks.run_lifecycle(HookKind.BEFORE_SNAPSHOT, 0)).errors
    assert len(errors) == 1 and "has no _expiry_time" in str(errors[0].__cause__)


# -- OpenSSL's generators: Python's ssl and cryptography's own ---------------------------------


def test_reseed_openssl_feeds_both_generators(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.bindings.openssl import binding
    from cryptography.hazmat.primitives.asymmetric import ec

    ec.generate_private_key(ec.SECP256R1())  # cryptography's own OpenSSL has drawn
    ssl_fed: list[bytes] = []
    real_ssl_add = ssl.RAND_add

    def ssl_spy(data: bytes, entropy: float) -> None:
        ssl_fed.append(data)
        real_ssl_add(data, entropy)

    monkeypatch.setattr(ssl, "RAND_add", ssl_spy)
    crypto_fed: list[bytes] = []
    real_lib = binding.Binding().lib

    class Lib:
        def RAND_add(self, data: bytes, size: int, entropy: float) -> None:  # noqa: N802 - OpenSSL's name
            assert size == len(data) and entropy == len(data)
            crypto_fed.append(data)
            real_lib.RAND_add(data, size, entropy)  # the real library takes it

    class Binding:
        lib = Lib()

    monkeypatch.setattr(binding, "Binding", Binding)
    reseed_module.reseed_openssl(1)
    reseed_module.reseed_openssl(2)
    assert [len(b) for b in ssl_fed] == [48, 48] and ssl_fed[0] != ssl_fed[1]
    assert [len(b) for b in crypto_fed] == [48, 48] and crypto_fed[0] != crypto_fed[1]
    assert set(ssl_fed).isdisjoint(crypto_fed), "each generator gets its own bytes"
    assert ssl.RAND_status() and real_lib.RAND_status() == 1


# -- the API's edges ----------------------------------------------------------------------------


def test_unknown_clients_are_refused_and_nothing_is_registered() -> None:
    hooks = RestoreHooks()
    with pytest.raises(TypeError, match=r"does not know builtins\.object; it knows .*sqlalchemy"):
        reconnect_on_restore(object(), hooks=hooks)
    client = httpx.Client()
    with pytest.raises(TypeError, match=r"httpx and aiohttp clients cannot drop .*reopen_on_restore"):
        reconnect_on_restore(client, hooks=hooks)
    client.close()
    with pytest.raises(TypeError, match="open must be callable, not int"):
        reopen_on_restore(42, hooks=hooks)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="close must be callable, not str"):
        reopen_on_restore(httpx.AsyncClient, "aclose", hooks=hooks)  # type: ignore[arg-type]
    assert len(hooks) == 0 and not hooks.lifecycle_hooks(HookKind.BEFORE_SNAPSHOT)
    assert "asyncpg.pool.Pool" in _supported_clients()


def test_a_client_registers_once_per_registry_and_stops_explicitly(redis_port: int) -> None:
    hooks, other = RestoreHooks(), RestoreHooks()
    client = reconnect_on_restore(redis.Redis(port=redis_port), hooks=hooks)
    with pytest.raises(ValueError, match="already registered on this registry"):
        reconnect_on_restore(client, hooks=hooks)
    reconnect_on_restore(client, hooks=other)
    assert len(hooks) == 1 and len(hooks.lifecycle_hooks(HookKind.BEFORE_SNAPSHOT)) == 1
    assert stop_reconnecting(client, hooks=hooks) is True
    assert stop_reconnecting(client, hooks=hooks) is False
    assert len(hooks) == 0 and not hooks.lifecycle_hooks(HookKind.BEFORE_SNAPSHOT) and len(other) == 1
    clients = reopen_on_restore(httpx.AsyncClient, hooks=other)
    assert isinstance(clients, Reopenable) and len(other) == 2
    assert stop_reconnecting(clients, hooks=other) and stop_reconnecting(client, hooks=other) and len(other) == 0
    client.close()


def test_the_process_registry_is_the_default(redis_port: int) -> None:
    from sysgenid_async.restore import restore_hooks
    from sysgenid_async.testing import isolated_state

    with isolated_state():
        client = reconnect_on_restore(redis.Redis(port=redis_port))
        assert [hook.name for hook in restore_hooks.hooks] == ["reconnect Redis"]
        assert stop_reconnecting(client) and len(restore_hooks) == 0
        client.close()


def test_nothing_is_imported_that_the_service_did_not_import() -> None:
    """Every client package is installed here: the integrations and the default hooks import none."""
    code = """
import sys, anyio
from sysgenid_async.integrations import reconnect_on_restore, reopen_on_restore
from sysgenid_async.restore import RestoreHooks, install_default_hooks
hooks = install_default_hooks(RestoreHooks())
anyio.run(hooks.run, 1)
clients = ("sqlalchemy", "asyncpg", "psycopg", "redis", "httpx", "aiohttp", "botocore", "boto3", "cryptography",
           "numpy")
print(sorted(name for name in clients if name in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
