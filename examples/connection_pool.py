"""Reopen a connection pool on restore: an httpx.AsyncClient, rebuilt by a hook.

    python examples/connection_pool.py --simulate

After a restore every clone holds the same pooled connections (the same sockets' peers
see two clients speaking on one connection) and the same TLS session state. A hook in the
CONNECTIONS phase closes the old client and opens a new one.
"""

from __future__ import annotations

import http.server
import threading

import anyio
import httpx
from _restores import Restore, run_with_restores

from sysgenid_async.integrations import Reopenable
from sysgenid_async.restore import Phase, on_restore, restore_watcher

client = Reopenable(open=httpx.AsyncClient, close=lambda c: c.aclose())
on_restore(client.reopen, phase=Phase.CONNECTIONS)


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from port {self.client_address[1]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


async def main_async(restore: Restore | None) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        await client.start()
        async with restore_watcher() as watcher:
            print("before:", (await client.current.get(url)).text.strip(), flush=True)
            if restore is None:
                await anyio.sleep_forever()
                return
            async with watcher.subscribe() as changes:
                generation = restore()
                async for seen in changes:  # hooks have run once subscribers hear of it
                    if seen == generation:
                        break
            print("after: ", (await client.current.get(url)).text.strip(), flush=True)
            print(f"client reopened {client.reopens} time(s)", flush=True)
        await client.aclose()
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    run_with_restores(__doc__, lambda restore: anyio.run(main_async, restore))


if __name__ == "__main__":
    main()
