"""Real PostgreSQL and Redis servers for the client tests: Debian's binaries, started on
loopback in a private directory for one test session, then stopped and removed.

PostgreSQL refuses to run as root: as root it runs as the ``postgres`` user that Debian's
package creates. ``nox -s integrations`` installs the packages; a missing server is an error
here, never a skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

START_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _binary(pattern: str, package: str) -> str:
    found = sorted(glob.glob(pattern))
    if not found:
        pytest.fail(f"{pattern} is missing: install Debian's {package} (nox -s integrations does)", pytrace=False)
    return found[-1]


def _stop(process: subprocess.Popen[bytes], stop_signal: int) -> None:
    if process.poll() is None:
        process.send_signal(stop_signal)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until(ready: object, process: subprocess.Popen[bytes], what: str, log: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while not ready():  # type: ignore[operator]
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{_tail(log)}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready after {START_SECONDS:.0f} s:\n{_tail(log)}", pytrace=False)
        time.sleep(0.1)


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as log:
            return log.read()[-2000:]
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str

    def url(self, driver: str = "postgresql") -> str:
        return f"{driver}://{self.user}@{self.host}:{self.port}/postgres"


@contextmanager
def postgres() -> Iterator[Postgres]:
    initdb = _binary("/usr/lib/postgresql/*/bin/initdb", "postgresql")
    server = os.path.join(os.path.dirname(initdb), "postgres")
    is_ready = os.path.join(os.path.dirname(initdb), "pg_isready")
    home = tempfile.mkdtemp(prefix="sga-pg-", dir="/tmp")
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(home, owner.pw_uid, owner.pw_gid)
        # The server itself runs as that user (no wrapper process, which would not pass on a
        # stop signal).
        run_as = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    data, log = os.path.join(home, "data"), os.path.join(home, "server.log")
    port = free_port()
    process: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([initdb, "-D", data, "-U", "tester", "--auth=trust", "--no-sync"],
                       check=True, capture_output=True, **run_as)
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [server, "-D", data, "-k", home, "-h", "127.0.0.1", "-p", str(port),
                 "-c", "fsync=off", "-c", "max_connections=50"],
                stdout=out, stderr=subprocess.STDOUT, **run_as,
            )

        def ready() -> bool:
            return subprocess.run([is_ready, "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode == 0

        _wait_until(ready, process, "postgres", log)
        yield Postgres("127.0.0.1", port, "tester")
    finally:
        if process is not None:
            _stop(process, signal.SIGINT)  # PostgreSQL's fast shutdown: clients are disconnected
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def redis() -> Iterator[int]:
    """A Redis server on loopback; its port."""
    binary = shutil.which("redis-server") or _binary("/usr/bin/redis-server", "redis-server")
    home = tempfile.mkdtemp(prefix="sga-redis-", dir="/tmp")
    port = free_port()
    log = os.path.join(home, "server.log")
    process: subprocess.Popen[bytes] | None = None
    try:
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", home, "--daemonize", "no"],
                stdout=out, stderr=subprocess.STDOUT,
            )

        def ready() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                    connection.sendall(b"PING\r\n")
                    return connection.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        _wait_until(ready, process, "redis-server", log)
        yield port
    finally:
        if process is not None:
            _stop(process, signal.SIGTERM)
        shutil.rmtree(home, ignore_errors=True)
