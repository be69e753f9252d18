"""A real ``redis-server`` on a free loopback port, once per test session.

``redis_server`` (session) yields a ``RedisServer`` with ``.url``, ``.port``, ``.stop()`` and
``.start()`` (outage tests stop it and start it again on the same port). ``redis_url`` (function)
makes sure it runs, empties its database and yields its URL. Without the binary the tests skip
(``apt-get install redis-server``); with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from plugins.ci import missing_dependency
from plugins.net import free_port

INSTALL_HINT = "redis-server not found: install it with `sudo apt-get install -y redis-server`"


class RedisServer:
    """A ``redis-server`` process without persistence, bound to 127.0.0.1."""

    def __init__(self, binary: str, workdir: Path, port: int | None = None, password: str | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` (``redis://:<password>@...`` with a password)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def client(self) -> redis.Redis:
        """A plain client (string responses)."""
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, decode_responses=True, socket_timeout=2
        )

    def extra_args(self) -> tuple[str, ...]:
        """Arguments past the common ones (a password; a cluster node adds its own)."""
        return ("--requirepass", self.password) if self.password else ()

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        if self.running:
            return
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
                "--daemonize", "no",
                *self.extra_args(),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        client = self.client()
        try:
            while True:
                if self.proc.poll() is not None:
                    tail = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{tail}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not answer PING on port {self.port} in {timeout} s")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def redis_binary() -> str:
    """The redis-server path, or skip (fail under CI=true) with the install command."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing_dependency(INSTALL_HINT)
    return binary


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for the whole session."""
    server = RedisServer(redis_binary(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session server's URL, running and with an empty database."""
    redis_server.start()
    client = redis_server.client()
    try:
        client.flushdb()
    finally:
        client.close()
    yield redis_server.url
