"""Ready-made restore handling for the clients services hold: one line per client.

    from sysgenid_async.integrations import reconnect_on_restore, reopen_on_restore

    engine = reconnect_on_restore(create_async_engine(url))      # SQLAlchemy
    pool = reconnect_on_restore(await asyncpg.create_pool(dsn))  # asyncpg
    cache = reconnect_on_restore(redis.asyncio.Redis())          # redis-py
    session = reconnect_on_restore(boto3.Session())              # boto3, botocore
    http = reopen_on_restore(httpx.AsyncClient)                  # httpx, aiohttp: rebuilt

A clone holds the snapshot's sockets: connections whose peer belongs to the original VM, TLS
sessions with the same keys and sequence numbers, temporary credentials fetched before the
snapshot. Before a snapshot (``sysgenid-async prepare``) and after a restore, each client here
drops what it holds, in phase ``CONNECTIONS``:

- SQLAlchemy ``Engine`` and ``AsyncEngine``: ``dispose()``, a new pool in place (a connection
  checked out meanwhile is closed when it is returned);
- asyncpg ``Pool``: ``expire_connections()``, each replaced at its next acquire;
- redis-py ``Redis`` (sync and asyncio): the pool's ``disconnect()``; the next command reconnects
  (one in flight is sent again by redis-py's retry);
- boto3 and botocore ``Session`` objects, or botocore ``RefreshableCredentials``: temporary
  credentials marked expired, so the next request fetches new ones (the same object that
  clients made from the session hold).

httpx and aiohttp clients cannot drop their connections and go on, so
:func:`reopen_on_restore` keeps one in a :class:`Reopenable`: a new
client is opened, swapped in, and the old one closed once no lease holds it.

No client library is imported here: a client is recognised by its class, whose module is
loaded already when the user has one. Registrations hold their client until
:func:`stop_reconnecting` says otherwise.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

import anyio

from .restore.callbacks import maybe_await
from .restore.hooks import RestoreHooks, restore_hooks
from .restore.phases import Phase

__all__ = ["Reopenable", "reconnect_on_restore", "reopen_on_restore", "stop_reconnecting"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

# (module, class name) -> what a restore does to such a client; the first match in the MRO wins.
_ACTIONS: dict[tuple[str, str], Callable[[Any], object]] = {}


def _action(module: str, name: str) -> Callable[[Callable[[Any], object]], Callable[[Any], object]]:
    def add(function: Callable[[Any], object]) -> Callable[[Any], object]:
        _ACTIONS[(module, name)] = function
        return function

    return add


def _close_on_checkin(dbapi_connection: object, entry: Any) -> None:
    entry.close()


@_action("sqlalchemy.engine.base", "Engine")
@_action("sqlalchemy.ext.asyncio.engine", "AsyncEngine")
def _dispose_engine(engine: Any) -> object:
    # dispose(): a new, empty pool in place, the idle connections closed. The ones checked out
    # go back to the old pool when returned, to wait there for the garbage collector: a
    # listener closes each as it comes back, so the request that held it finishes on it and
    # nothing of the snapshot stays open.
    from sqlalchemy import event

    old_pool = getattr(engine, "sync_engine", engine).pool
    event.listen(old_pool, "checkin", _close_on_checkin)
    return engine.dispose()


@_action("asyncpg.pool", "Pool")
def _expire_pool(pool: Any) -> object:
    return pool.expire_connections()


@_action("redis.client", "Redis")
@_action("redis.asyncio.client", "Redis")
def _disconnect_redis(client: Any) -> object:
    return client.connection_pool.disconnect()


def _private(owner: Any, name: str) -> Any:
    """botocore keeps what a hook must reach in private attributes: a release that renames one
    makes the hook fail, loudly, rather than leave the snapshot's credentials in place."""
    if not hasattr(owner, name):
        raise RuntimeError(
            f"this botocore's {type(owner).__qualname__} has no {name}: its credentials cannot be marked expired"
        )
    return getattr(owner, name)


@_action("boto3.session", "Session")
def _expire_boto3_session(session: Any) -> None:
    _expire_session_credentials(_private(session, "_session"))


@_action("botocore.session", "Session")
def _expire_session_credentials(session: Any) -> None:
    # What the session has resolved, if anything: get_credentials() would resolve them, and
    # a hook that fetches credentials before a snapshot puts them in it.
    credentials = _private(session, "_credentials")
    if credentials is not None:
        action = _find_action(credentials)
        if action is not None:
            action(credentials)


@_action("botocore.credentials", "Credentials")
def _static_credentials(credentials: Any) -> None:
    """Static keys (environment, files) are the same in every clone and never expire: nothing to do."""


@_action("botocore.credentials", "RefreshableCredentials")
def _expire_credentials(credentials: Any) -> None:
    # Temporary ones are marked expired: the next request refreshes them, under botocore's own
    # lock (the refresh is a request; a hook makes none).
    now = _private(credentials, "_time_fetcher")()
    _private(credentials, "_expiry_time")
    credentials._expiry_time = now - datetime.timedelta(seconds=1)


def _find_action(resource: object) -> Callable[[Any], object] | None:
    for cls in type(resource).__mro__:
        action = _ACTIONS.get((cls.__module__, cls.__qualname__))
        if action is not None:
            return action
    return None


def _supported_clients() -> list[str]:
    """The client classes :func:`reconnect_on_restore` knows, as ``module.Class``."""
    return sorted(f"{module}.{name}" for module, name in _ACTIONS)


class _ClientHook:
    """The hook registered for one client: it drops what the client holds. Found again by its
    client (:func:`stop_reconnecting`), in the registry itself: no table beside it."""

    def __init__(self, client: object, drop: Callable[[], object]) -> None:
        self.client = client
        self._drop = drop

    async def __call__(self, generation: int) -> None:
        await maybe_await(self._drop())


def _hook_of(registry: RestoreHooks, client: object) -> _ClientHook | None:
    for hook in registry.hooks:
        function = hook.function
        if isinstance(function, _ClientHook) and function.client is client:
            return function
    return None


def _register(client: object, drop: Callable[[], object], hooks: RestoreHooks | None, name: str) -> None:
    registry = restore_hooks if hooks is None else hooks
    if _hook_of(registry, client) is not None:
        raise ValueError(f"{type(client).__qualname__} {client!r} is already registered on this registry")
    hook = _ClientHook(client, drop)
    registry.register(hook, phase=Phase.CONNECTIONS, name=name)
    registry.before_snapshot(hook, phase=Phase.CONNECTIONS, name=name)


def reconnect_on_restore(client: T, *, hooks: RestoreHooks | None = None) -> T:
    """Have ``client`` drop its connections (or credentials) before a snapshot and after a
    restore; returns it. ``hooks``: the registry (default: the process's).

    :raises TypeError: a client this module does not know (the error lists the ones it knows),
        or an httpx or aiohttp client, which :func:`reopen_on_restore` rebuilds instead.
    :raises ValueError: ``client`` is already registered on that registry.
    """
    action = _find_action(client)
    if action is None:
        kind = type(client)
        advice = (
            "; httpx and aiohttp clients cannot drop their connections: use reopen_on_restore()"
            if kind.__module__.split(".")[0] in ("httpx", "aiohttp") else ""
        )
        raise TypeError(
            f"reconnect_on_restore() does not know {kind.__module__}.{kind.__qualname__}{advice}; "
            f"it knows {', '.join(_supported_clients())}"
        )
    _register(client, lambda: action(client), hooks, f"reconnect {type(client).__qualname__}")
    return client


def _close(client: Any) -> object:
    """httpx's ``AsyncClient.aclose``, aiohttp's ``ClientSession.close``, or a plain ``close``."""
    close = getattr(client, "aclose", None) or getattr(client, "close", None)
    if close is None:
        raise TypeError(f"{type(client).__qualname__} has neither aclose() nor close(): pass close=")
    return close()


class Reopenable(Generic[T]):
    """A resource rebuilt on restore: ``pool.current`` is always a live one.

    ``open()`` makes a new resource, ``close(resource)`` disposes of one (both may be
    async). Register ``reopen`` as a hook (phase ``CONNECTIONS``) or call it yourself.
    A reopen opens the new resource, swaps it in, then closes the old one: ``current`` is
    never empty. Code that must not see its resource closed under it holds a lease,
    ``async with pool.use() as resource:``: the old resource is closed once the last
    lease on it ends.
    """

    def __init__(
        self,
        open: Callable[[], T | Awaitable[T]],
        close: Callable[[T], object | Awaitable[object]],
    ) -> None:
        self._open = open
        self._close = close
        self._current: T | None = None
        self._lock: anyio.Lock | None = None
        self._leases: dict[int, int] = {}  # id(resource) -> leases held on it
        self._released: anyio.Event | None = None
        self.reopens = 0

    @property
    def current(self) -> T:
        if self._current is None:
            raise RuntimeError("not opened yet: await start() first")
        return self._current

    async def start(self) -> T:
        if self._current is None:
            self._current = await maybe_await(self._open())
        return self._current

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[T]:
        """Lease the current resource: a reopen meanwhile closes it only after the lease ends."""
        resource = self.current
        key = id(resource)
        self._leases[key] = self._leases.get(key, 0) + 1
        try:
            yield resource
        finally:
            self._leases[key] -= 1
            if not self._leases[key]:
                del self._leases[key]
                if self._released is not None:
                    self._released.set()

    async def reopen(self, generation: int | None = None) -> T:
        """Open a new resource, swap it in, then close the old one once no lease holds it."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            new = await maybe_await(self._open())
            old, self._current = self._current, new
            self.reopens += 1
            if old is not None:
                await self._retire(old)
            return new

    async def _retire(self, old: T) -> None:
        while id(old) in self._leases:
            self._released = anyio.Event()
            await self._released.wait()
        try:
            await maybe_await(self._close(old))
        except Exception as exc:  # the new resource is in place: a failed close is only logged
            logger.error("closing the replaced resource %r failed", old, exc_info=exc)

    async def aclose(self) -> None:
        old, self._current = self._current, None
        if old is not None:
            await maybe_await(self._close(old))


def reopen_on_restore(
    open: Callable[[], T | Awaitable[T]],
    close: Callable[[T], object | Awaitable[object]] | None = None,
    *,
    hooks: RestoreHooks | None = None,
) -> Reopenable[T]:
    """A :class:`Reopenable` of ``open()`` (an httpx ``AsyncClient``, an
    aiohttp ``ClientSession``, ...), rebuilt before a snapshot and after a restore.

    ``close`` defaults to the client's ``aclose()``, else its ``close()``. ``await
    clients.start()`` opens the first one; ``clients.current`` or ``async with clients.use()``
    is the one to use; ``await clients.aclose()`` and :func:`stop_reconnecting` end it.
    """
    if not callable(open):
        raise TypeError(f"open must be callable, not {type(open).__name__}")
    if close is not None and not callable(close):
        raise TypeError(f"close must be callable, not {type(close).__name__}")
    clients: Reopenable[T] = Reopenable(open, _close if close is None else close)
    _register(clients, clients.reopen, hooks, f"reopen {getattr(open, '__qualname__', type(open).__qualname__)}")
    return clients


def stop_reconnecting(client: object, *, hooks: RestoreHooks | None = None) -> bool:
    """Undo :func:`reconnect_on_restore` or :func:`reopen_on_restore` for ``client`` (what either
    returned) on ``hooks``; False if it was not registered there."""
    registry = restore_hooks if hooks is None else hooks
    hook = _hook_of(registry, client)
    return hook is not None and registry.unregister(hook)
