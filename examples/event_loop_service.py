"""An event-loop service that mixes sysgenid with other I/O: a TCP server on loopback.

    python examples/event_loop_service.py --simulate

The process's restore watcher runs beside the server in one task group
(``async with restore_watcher()``); the ready-made hooks reseed ``random`` and renew the
instance identity, so a client sees a new identity after a restore.
"""

from __future__ import annotations

import random

import anyio
import anyio.abc
from _restores import Restore, run_with_restores

from sysgenid_async.restore import restore_watcher
from sysgenid_async.restore.reseed import ProcessIdentity, install_default_hooks

instance = ProcessIdentity()
install_default_hooks()  # reseed random, numpy, OpenSSL; renew identities: on the process-wide registry


async def handle(client: anyio.abc.SocketStream) -> None:
    async with client:
        await client.send(f"{instance.value} {random.getrandbits(32)}\n".encode())


async def ask(port: int) -> str:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        return (await stream.receive()).decode().strip()


async def serve(restore: Restore | None) -> None:
    async with restore_watcher() as watcher, anyio.create_task_group() as tasks:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        tasks.start_soon(listener.serve, handle)
        print(f"serving on 127.0.0.1:{port}", flush=True)
        if restore is None:
            await anyio.sleep_forever()
            return
        before = await ask(port)
        async with watcher.subscribe() as changes:
            generation = restore()
            async for seen in changes:  # the hooks have run once a subscriber hears of it
                if seen == generation:
                    break
        after = await ask(port)
        print(f"before the restore: {before}\nafter the restore:  {after}", flush=True)
        print("identity renewed" if before.split()[0] != after.split()[0] else "identity UNCHANGED", flush=True)
        tasks.cancel_scope.cancel()  # stops the server, which closes the listener


def main() -> None:
    run_with_restores(__doc__, lambda restore: anyio.run(serve, restore))


if __name__ == "__main__":
    main()
