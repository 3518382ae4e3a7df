"""The local control channel: one unix socket per watcher process, in the registry directory.

Protocol: the client sends one JSON object on one line (at most :data:`MESSAGE_LIMIT`
bytes), ``{"op": "prepare", "timeout": 30}``, ``{"op": "resume"}`` or ``{"op": "status"}``;
the process answers with one JSON object on one line, ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``, and closes.

Who may ask: the socket is mode 0600 in a 0700 directory, and the server checks the peer's
credentials (``SO_PEERCRED``): only the same user, or root. A request that does not arrive
within :data:`REQUEST_SECONDS`, is too long, is not JSON, or names no known operation gets
an error reply; the service goes on (docs/security.md).

The server is best-effort, the restores it sits beside are not:

- it serves at most :data:`MAX_CONNECTIONS` connections at once; one more is answered with an
  error line and closed at once;
- when accepting fails for want of file descriptors (``EMFILE``, ``ENFILE``, ...), it logs once
  and accepts again after a pause (doubling up to :data:`ACCEPT_BACKOFF_SECONDS`);
- nothing a peer does (silence, half a line, going away mid-reply) raises out of :func:`serve`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from ..errors import SysGenIDError

__all__ = [
    "ACCEPT_BACKOFF_SECONDS",
    "MAX_CONNECTIONS",
    "MESSAGE_LIMIT",
    "OPERATIONS",
    "REQUEST_SECONDS",
    "ControlError",
    "ProtocolError",
    "peer_allowed",
    "request",
    "serve",
]

logger = logging.getLogger(__name__)

#: The longest request or reply line, in bytes.
MESSAGE_LIMIT = 4096
#: How long the server waits for a request (and a client for a connection), in seconds.
REQUEST_SECONDS = 5.0
#: What a client may ask.
OPERATIONS = frozenset({"prepare", "resume", "status"})
#: How many control connections one watcher serves at once.
MAX_CONNECTIONS = 16
#: The first and the longest pause before accepting again when file descriptors ran out.
ACCEPT_BACKOFF_SECONDS = (0.05, 1.0)
# accept() errors that a pause cures: out of descriptors or memory, or a peer gone before accept.
_TRANSIENT_ACCEPT_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED})
# Longest sun_path, with its terminating NUL.
_SUN_PATH_MAX = 107

Reply = dict[str, Any]
Handler = Callable[[str, Mapping[str, Any]], Awaitable[Reply]]


class ProtocolError(SysGenIDError, ValueError):
    """A malformed request or reply on the control channel."""


class ControlError(SysGenIDError):
    """A process could not be asked: no answer, refused, gone, or a malformed reply."""


def peer_allowed(peer_uid: int, own_uid: int) -> bool:
    """Whether a peer with ``peer_uid`` may control a process running as ``own_uid``."""
    return peer_uid in (0, own_uid)


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """The operation and the whole request; :class:`ProtocolError` when malformed."""
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed message: not JSON ({exc})") from None
    if not isinstance(message, dict):
        raise ProtocolError("malformed message: not a JSON object")
    op = message.get("op")
    if op not in OPERATIONS:
        raise ProtocolError(f"malformed message: op must be one of {sorted(OPERATIONS)}, not {op!r}")
    timeout = message.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0):
        raise ProtocolError(f"malformed message: timeout must be a positive number, not {timeout!r}")
    return op, message


class _EmptyMessageError(ProtocolError):
    """The peer closed before sending anything: for a client, the process gave no reply."""


async def _read_line(stream: anyio.abc.ByteReceiveStream) -> bytes:
    buffered = BufferedByteReceiveStream(stream)
    try:
        line = await buffered.receive_until(b"\n", MESSAGE_LIMIT + 1)
    except anyio.IncompleteRead:
        line = buffered.buffer  # a peer may end its request by shutting down its side
    except anyio.DelimiterNotFound:
        raise ProtocolError(f"message longer than {MESSAGE_LIMIT} bytes") from None
    if len(line) > MESSAGE_LIMIT:
        raise ProtocolError(f"message longer than {MESSAGE_LIMIT} bytes")
    if not line:
        raise _EmptyMessageError("malformed message: empty")
    return line


def _encode(reply: Mapping[str, Any]) -> bytes:
    return json.dumps(reply, sort_keys=True).encode() + b"\n"


def _peer_uid(stream: anyio.abc.SocketStream) -> int:
    raw: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    credentials = raw.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return int(uid)


async def handle_connection(stream: anyio.abc.SocketStream, handler: Handler) -> None:
    """Serve one request on ``stream``: check the peer, read, dispatch, reply, close.
    Never raises (but a cancellation): a bad client must not take the service down."""
    async with stream:
        try:
            uid = _peer_uid(stream)
            # Read the request before anything else, so that a refused peer gets its reply
            # (not a broken pipe); a refused request is never parsed.
            with anyio.fail_after(REQUEST_SECONDS):
                line = await _read_line(stream)
            if not peer_allowed(uid, os.geteuid()):
                logger.warning("control channel: refused a request from uid %d", uid)
                reply: Reply = {"ok": False, "error": f"permission denied: uid {uid} may not control this process"}
            else:
                op, message = parse_request(line)
                reply = await handler(op, message)
        except ProtocolError as exc:
            reply = {"ok": False, "error": str(exc)}
        except TimeoutError:
            reply = {"ok": False, "error": f"no request within {REQUEST_SECONDS:g} s"}
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return  # the client went away
        except Exception as exc:  # a bug must not end the watcher: answer, log
            logger.exception("control channel: the request failed")
            reply = {"ok": False, "error": f"internal error: {exc!r}"}
        try:
            with anyio.fail_after(REQUEST_SECONDS):
                await stream.send(_encode(reply))
        except (TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass


def check_socket_path(path: Path) -> None:
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ControlError(f"{path}: longer than a unix socket path may be ({_SUN_PATH_MAX} bytes)")


async def serve(
    path: Path, handler: Handler, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Listen on ``path`` (mode 0600) until cancelled; the socket file is removed on the way out.

    What a peer does never raises out of it; an error of the listening socket itself does (the
    caller may start it again)."""
    check_socket_path(path)
    _remove(path)  # named after this process's pid: whatever is there is stale
    listener = await anyio.create_unix_listener(path, mode=0o600)
    try:
        async with listener, anyio.create_task_group() as connections:
            task_status.started()
            await _accept_loop(listener, handler, connections)
    finally:
        _remove(path)


async def _accept_loop(
    listener: anyio.abc.SocketListener, handler: Handler, connections: anyio.abc.TaskGroup
) -> None:
    active = 0
    pause: float | None = None  # set while accepting fails for want of descriptors

    async def serve_one(stream: anyio.abc.SocketStream) -> None:
        nonlocal active
        try:
            await handle_connection(stream, handler)
        finally:
            active -= 1

    while True:
        try:
            stream = await listener.accept()
        except anyio.BrokenResourceError as exc:
            code = getattr(exc.__cause__, "errno", None)
            if code not in _TRANSIENT_ACCEPT_ERRORS:
                raise
            if code != errno.ECONNABORTED:
                if pause is None:
                    logger.warning("control channel: cannot accept (%s); trying again, pausing up to %g s",
                                   os.strerror(code or 0), ACCEPT_BACKOFF_SECONDS[1])
                    pause = ACCEPT_BACKOFF_SECONDS[0]
                await anyio.sleep(pause)
                pause = min(pause * 2, ACCEPT_BACKOFF_SECONDS[1])
            continue
        if pause is not None:
            logger.warning("control channel: accepting again")
            pause = None
        if active >= MAX_CONNECTIONS:
            await _refuse(stream, f"busy: {MAX_CONNECTIONS} control connections are open; try again")
            continue
        active += 1
        connections.start_soon(serve_one, stream)


async def _refuse(stream: anyio.abc.SocketStream, error: str) -> None:
    """Answer with an error line if the socket takes it at once, and close."""
    raw: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    with contextlib.suppress(OSError):
        raw.send(_encode({"ok": False, "error": error}), socket.MSG_DONTWAIT)
    with contextlib.suppress(OSError, anyio.BrokenResourceError):
        await stream.aclose()


def _remove(path: Path) -> None:
    # One unlink in a local directory: not worth a worker thread.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def request(path: str | os.PathLike[str], message: Mapping[str, Any], timeout: float) -> Reply:
    """Send ``message`` to the process at ``path``; its reply. :class:`ControlError` when
    it cannot be asked or does not answer within ``timeout`` seconds."""
    target = Path(path)
    try:
        with anyio.fail_after(timeout):
            try:
                stream = await anyio.connect_unix(target)
            except ConnectionRefusedError:
                raise ControlError("connection refused (a stale socket: the process is not listening)") from None
            except FileNotFoundError:
                raise ControlError("no control socket") from None
            except PermissionError:
                raise ControlError("permission denied on the control socket") from None
            async with stream:
                await stream.send(_encode(message))
                try:
                    line = await _read_line(stream)
                except _EmptyMessageError:
                    raise ControlError("closed without a reply (the process died, or refused)") from None
                except ProtocolError as exc:
                    raise ControlError(f"malformed reply: {exc}") from None
                except (anyio.BrokenResourceError, OSError) as exc:
                    raise ControlError(f"connection lost: {exc}") from None
    except TimeoutError:
        raise ControlError(f"no answer within {timeout:g} s") from None
    try:
        reply = json.loads(line)
    except ValueError:
        raise ControlError("malformed reply: not JSON") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ControlError("malformed reply: no 'ok'")
    return reply
