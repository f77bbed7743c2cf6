"""Servers the tests need, as pytest fixtures (a plugin loaded by the root ``conftest.py``).

Each engine comes from, in order: its URL in the environment (a server already running, e.g.
the machine's), else a throwaway server started from the installed binary in a temp directory,
else the test is skipped with a reason that says what to install. With
``WATERFALL_REQUIRE_SERVICES=1`` (set by ``.ci/run``) a missing service fails the test instead.
Every test gets a fresh namespace (a key prefix) and what it wrote is removed afterwards.

Redis: ``REDIS_URL``; else ``redis-server`` (Debian: ``apt-get install redis-server``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = [
    "RedisServer",
    "free_port",
    "missing_service",
    "redis_prefix",
    "redis_server",
    "redis_url",
]

REQUIRE = "WATERFALL_REQUIRE_SERVICES"


def missing_service(reason: str) -> None:
    """Skip the test for want of a service, or fail it when services are required (CI)."""
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{reason} ({REQUIRE}=1: a missing service is a failure)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- Redis -------------------------------------------------------------------------------------
class RedisServer:
    """A throwaway ``redis-server`` on a loopback port, in a directory of its own, with no
    persistence; it can be stopped (killed), started again on the same port, and paused
    (SIGSTOP: a Redis that hangs). Always :meth:`stop` it (a context manager does)."""

    def __init__(
        self, directory: Path, port: int | None = None, *, password: str | None = None
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server")
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where it listens (database 0), with the password if it has one."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it and wait (bounded) until it answers PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        for _ in range(500):
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: see {self.directory / 'redis.log'}")
            if _pings(self.url):
                return self
            time.sleep(0.01)
        self.stop()
        raise RuntimeError("redis-server did not answer within 5 s")

    def stop(self) -> None:
        """Kill it (as a crash would: nothing is saved) and wait for it to end."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)  # (a paused one must run to die)
            process.kill()
        process.wait(10)

    def pause(self) -> None:
        """Freeze it (SIGSTOP): connections stay open and nothing answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pings(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def _redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """The session's Redis URL (``None``: there is none; the reason is in ``_REDIS_MISSING``)."""
    global _REDIS_MISSING
    try:
        import redis  # noqa: F401
    except ImportError:
        _REDIS_MISSING = "redis-py is not installed: pip install 'waterfall-asgi[redis]'"
        yield None
        return
    url = os.environ.get("REDIS_URL")
    if url:
        if not _pings(url):
            _REDIS_MISSING = "REDIS_URL is set but nothing answers PING there"
            yield None
            return
        yield url
        return
    try:
        server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    except FileNotFoundError:
        _REDIS_MISSING = (
            "no Redis: set REDIS_URL, or install redis-server (apt-get install redis-server)"
        )
        yield None
        return
    try:
        yield server.url
    finally:
        server.stop()


_REDIS_MISSING = ""


@pytest.fixture
def redis_url(_redis_service: str | None) -> str:
    """A Redis URL for this test (skips, or fails under ``WATERFALL_REQUIRE_SERVICES=1``)."""
    if _redis_service is None:
        missing_service(_REDIS_MISSING)
    assert _redis_service is not None
    return _redis_service


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test (or run) uses; every key under it is deleted afterwards."""
    import redis

    prefix = f"waterfall-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        names = list(client.scan_iter(match=prefix + "*", count=1000))
        if names:
            client.delete(*names)
    finally:
        client.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A throwaway ``redis-server`` of this test's own, to stop, restart or pause at will
    (never the shared one)."""
    try:
        server = RedisServer(tmp_path / "redis").start()
    except FileNotFoundError:
        missing_service("no redis-server binary: apt-get install redis-server")
        raise AssertionError("unreachable") from None
    try:
        yield server
    finally:
        server.stop()
