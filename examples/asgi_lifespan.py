"""An ASGI application whose lifespan runs the restore watcher: one line in the lifespan,
and a readiness gate: one line before each request (``await restored()``), so that a
request arriving at resume time waits for the restore hooks instead of answering with the
snapshot's state.

    python examples/asgi_lifespan.py --simulate

Any ASGI server (uvicorn, hypercorn, granian) calls the lifespan; here a tiny driver plays
the server, so the example runs with no server installed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import anyio
from _restores import Restore, run_with_restores

from sysgenid_async.restore import restore_watcher, restored
from sysgenid_async.restore.reseed import ProcessIdentity, install_default_hooks

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

instance = ProcessIdentity()
install_default_hooks()


@contextlib.asynccontextmanager
async def lifespan() -> AsyncIterator[None]:
    async with restore_watcher():  # the one line: the watcher lives as long as the app
        yield


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        async with contextlib.AsyncExitStack() as stack:
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await stack.enter_async_context(lifespan())
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await stack.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
    await restored()  # the readiness gate: the hooks of the current generation have run
    body = json.dumps({"instance": str(instance.value)}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def get(path: str) -> dict[str, Any]:
    """Play the server for one GET request."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": path}, receive, send)
    return json.loads(sent[-1]["body"])  # type: ignore[no-any-return]


async def serve(restore: Restore | None) -> None:
    to_app, app_inbox = anyio.create_memory_object_stream[Message](4)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](4)
    async with anyio.create_task_group() as tasks, to_app, from_app:
        tasks.start_soon(app, {"type": "lifespan"}, app_inbox.receive, app_outbox.send)
        await to_app.send({"type": "lifespan.startup"})
        assert (await from_app.receive())["type"] == "lifespan.startup.complete"
        print("before:", await get("/"), flush=True)
        if restore is None:
            await anyio.sleep_forever()
            return
        restore()
        with anyio.fail_after(30):  # a request right at resume time: the gate holds it until restored
            print("after: ", await get("/"), flush=True)
        await to_app.send({"type": "lifespan.shutdown"})
        assert (await from_app.receive())["type"] == "lifespan.shutdown.complete"


def main() -> None:
    run_with_restores(__doc__, lambda restore: anyio.run(serve, restore))


if __name__ == "__main__":
    main()
