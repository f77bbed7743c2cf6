"""Real services for the tests: PostgreSQL and Redis.

- ``database_url`` (session): a PostgreSQL server's URL. ``DATABASE_URL`` when set; else a
  throwaway server started from the installed ``initdb``/``pg_ctl`` in a temporary directory
  (stopped at the end); else the test is skipped with a reason that says what to install, or
  fails when ``WATERFALL_REQUIRE_SERVICES=1`` (as ``.ci/run`` sets it). A fresh database is made
  for the run on that server and dropped afterwards.
- ``pg_url`` (each test): that database with a fresh schema of its own (the URL's
  ``search_path``), dropped after the test.
- :class:`PostgresServer`: a throwaway server a test may stop and start (a fault test never
  restarts the machine's shared one).
- ``redis_url`` (each test; the server is found once per session): ``REDIS_URL`` when set (and
  answering PING); else a throwaway ``redis-server`` from the installed binary in a temporary
  directory; else skipped with what to install (failed under ``WATERFALL_REQUIRE_SERVICES=1``).
- ``redis_prefix`` (each test): a key prefix no other test or run uses; every key under it is
  deleted afterwards.
- ``redis_server`` (each test) / :class:`RedisServer`: a throwaway ``redis-server`` of the
  test's own, to stop, restart or pause (never the machine's shared one).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

__all__ = [
    "PostgresServer",
    "RedisServer",
    "database_url",
    "execute",
    "free_port",
    "missing_service",
    "pg_url",
    "redis_prefix",
    "redis_server",
    "redis_url",
    "with_search_path",
]


def missing_service(reason: str) -> None:
    """Skip the test (or fail it when ``WATERFALL_REQUIRE_SERVICES=1``) for ``reason``."""
    if os.environ.get("WATERFALL_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (WATERFALL_REQUIRE_SERVICES=1: a missing service fails)")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / name).exists():
            return str(root / name)
    return None


class PostgresServer:
    """A PostgreSQL server of its own, in a temporary directory, on a free loopback port, with
    trust authentication for the user ``postgres``. Runs as the ``postgres`` system user when
    the tests run as root (``initdb`` refuses root)."""

    def __init__(self) -> None:
        initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise FileNotFoundError(
                "no PostgreSQL binaries (initdb, pg_ctl): install PostgreSQL "
                "(apt-get install postgresql) or set DATABASE_URL"
            )
        self._initdb, self._pg_ctl = initdb, pg_ctl
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="waterfall-pg-"))
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise FileNotFoundError("running as root with no postgres user") from None
            os.chown(self._dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.data = self._dir / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run(self._initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self._dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        self._run(
            self._pg_ctl, "-D", str(self.data), "-l", str(self._dir / "log"), "-w",
            "-t", "30", "-o", options, "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(self._pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def running(self) -> bool:
        done = subprocess.run(
            [*self._as, self._pg_ctl, "-D", str(self.data), "status"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return done.returncode == 0

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            if self.running():
                self.stop("immediate")
        shutil.rmtree(self._dir, ignore_errors=True)


def with_database(url: str, database: str) -> str:
    """``url`` naming ``database`` instead of its own."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def with_search_path(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` (asyncpg sends unknown URL query parameters as
    server settings)."""
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, f"search_path={schema}") if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def execute(url: str, *statements: str) -> None:
    """Run ``statements`` on the database at ``url``, from sync code (in a thread of its own,
    so that no event loop of the caller's is in the way)."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def _server_url() -> Iterator[str]:
    given = os.environ.get("DATABASE_URL")
    if given:
        yield given
        return
    try:
        server = PostgresServer()
    except (FileNotFoundError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        missing_service(f"no PostgreSQL: set DATABASE_URL, or install PostgreSQL ({exc})")
        return
    try:
        server.start()
        yield server.url
    finally:
        server.remove()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database for this test run, on ``DATABASE_URL``'s server or a throwaway one;
    dropped at the end."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        missing_service("asyncpg is not installed: pip install 'waterfall-asgi[postgres]'")
    for server in _server_url():
        name = f"waterfall_test_{secrets.token_hex(6)}"
        try:
            execute(server, f'CREATE DATABASE "{name}"')
        except (OSError, TimeoutError) as exc:
            missing_service(f"PostgreSQL at DATABASE_URL is not reachable: {exc}")
        try:
            yield with_database(server, name)
        finally:
            execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(database_url: str) -> Iterator[str]:
    """The run's database, with a fresh schema for this test (dropped afterwards)."""
    schema = f"t_{secrets.token_hex(6)}"
    execute(database_url, f"CREATE SCHEMA {schema}")
    try:
        yield with_search_path(database_url, schema)
    finally:
        execute(database_url, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


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
