"""``RedisCooldownStore`` beyond the common contract: sharing between replicas (and processes),
the round trips it makes, clock skew, Redis away (at startup, lost, hung), and secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from services import RedisServer, free_port

from waterfall_asgi import RedisCooldownStore, redact_url

pytestmark = pytest.mark.anyio

PASSWORD = "hunter2-DISTINCTIVE-redis-pw"


@asynccontextmanager
async def opened(url: str, prefix: str, **options: Any) -> AsyncIterator[RedisCooldownStore]:
    store = RedisCooldownStore(url, prefix=prefix, **options)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def until(condition: Callable[[], bool], what: str, tries: int = 1000) -> None:
    """Wait (bounded: ``tries`` × 10 ms) for ``condition``; never a timed assertion."""
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def raw(url: str, key: str) -> int | None:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        value = client.get(key)
        return int(value) if value is not None else None
    finally:
        client.close()


# -- sharing -----------------------------------------------------------------------------------
async def test_a_cooldown_reaches_another_replica(redis_url: str, redis_prefix: str) -> None:
    async with opened(redis_url, redis_prefix) as a, opened(redis_url, redis_prefix) as b:
        deadline = time.time() + 30
        assert await a.extend("p/m", deadline) == deadline
        await until(lambda: b._mirror.get("p/m") is not None, "b hears of the cooldown")
        assert await b.get("p/m") == pytest.approx(deadline, abs=0.01)
        # b's shorter hint changes nothing anywhere; a longer one reaches a
        assert await b.extend("p/m", deadline - 10) == pytest.approx(deadline, abs=0.01)
        assert await b.extend("p/m", deadline + 60) == deadline + 60
        await until(lambda: (a._mirror["p/m"]) > deadline + 1, "a hears of the longer one")
        assert await a.get("p/m") == pytest.approx(deadline + 60, abs=0.01)
    key = redis_prefix + "p/m"
    assert raw(redis_url, key) == pytest.approx((deadline + 60) * 1e6, abs=20_000)
    client = redis.Redis.from_url(redis_url)
    try:
        ttl = client.pttl(key)
    finally:
        client.close()
    assert 0 < ttl <= 90_000  # the key expires with its cooldown


async def test_reads_never_touch_redis_and_an_extend_is_one_round_trip(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    url = redis_server.url
    async with opened(url, redis_prefix, heartbeat=3600) as store:
        reset(url)
        for _ in range(200):
            assert await store.get("x/m") is None
        await store.snapshot()
        assert commands(url) == {}  # (INFO itself is counted after it answers)
        now = time.time()
        await store.extend("x/m", now + 30)
        assert await store.flush()
        script = {"time": 1, "get": 1, "set": 1, "publish": 1}  # run inside the one EVALSHA
        assert commands(url) == {"evalsha": 1, **script}
        await store.extend("x/m", now + 10)  # known to last longer already: nothing sent
        await store.extend("y/m", now - 1)  # already over: nothing to share
        for _ in range(200):
            assert await store.get("x/m") == now + 30
        assert await store.flush()
        assert commands(url) == {"evalsha": 1, **script}


def reset(url: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.config_resetstat()
    finally:
        client.close()


def commands(url: str) -> dict[str, int]:
    """The commands the server ran since :func:`reset`, by name (less those of the client
    asking)."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    ran = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    ours = ("info", "config|resetstat", "hello", "client|setinfo")  # (this client's own)
    return {k: v for k, v in ran.items() if k not in ours}


async def test_a_restarted_replica_reads_every_deadline(redis_url: str, redis_prefix: str) -> None:
    now = time.time()
    async with opened(redis_url, redis_prefix) as a:
        for i in range(30):
            await a.extend(f"p/m{i}", now + 100 + i)
    async with opened(redis_url, redis_prefix) as b:
        seen = await b.snapshot()
    assert seen == {f"p/m{i}": pytest.approx(now + 100 + i, abs=0.01) for i in range(30)}


async def test_clock_skew_between_hosts_does_not_matter(redis_url: str, redis_prefix: str) -> None:
    def ahead() -> float:
        return time.time() + 300.0  # this host's clock is 5 minutes fast

    def behind() -> float:
        return time.time() - 120.0  # ... and this one's 2 minutes slow

    async with (
        opened(redis_url, redis_prefix, clock=ahead) as a,
        opened(redis_url, redis_prefix, clock=behind) as b,
    ):
        await a.extend("p/m", ahead() + 30)
        await until(lambda: "p/m" in b._mirror, "b hears of it")
        # in b's own clock the cooldown ends 30 s from now, as it does for a
        assert await b.get("p/m") == pytest.approx(behind() + 30, abs=0.05)
        await b.extend("q/m", behind() + 7)
        await until(lambda: "q/m" in a._mirror, "a hears of it")
        assert await a.get("q/m") == pytest.approx(ahead() + 7, abs=0.05)


# A child process: one replica extends one key to each deadline (argv: url, prefix, JSON list),
# all at once.
CHILD = """
import asyncio, json, sys
from waterfall_asgi import RedisCooldownStore

async def main():
    url, prefix, deadlines = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    store = RedisCooldownStore(url, prefix=prefix, timeout=5.0, connect_timeout=5.0)
    await store.open()
    assert store.connected, store.health()
    await asyncio.gather(*(store.extend("hot/key", d) for d in deadlines))
    assert store.connected, store.health()
    await store.close()

asyncio.run(main())
"""


def test_concurrent_extends_from_several_processes_end_at_the_maximum(
    redis_url: str, redis_prefix: str
) -> None:
    now = time.time()
    # 4 processes × 40 deadlines, 0.5 s apart and shuffled between the processes: the
    # latest is unique, so the winner is unambiguous even with clock conversion
    values = [now + 600 + 0.5 * i for i in range(160)]
    shares = [values[i::4] for i in range(4)]
    processes = [
        subprocess.Popen([sys.executable, "-c", CHILD, redis_url, redis_prefix, json.dumps(share)])
        for share in shares
    ]
    try:
        codes = [process.wait(60) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(5)
    assert codes == [0, 0, 0, 0]
    stored = raw(redis_url, redis_prefix + "hot/key")
    assert stored is not None
    assert stored / 1e6 == pytest.approx(max(values), abs=0.1)  # and not the next, 0.5 s less

    async def read() -> float | None:
        async with opened(redis_url, redis_prefix) as store:
            return await store.get("hot/key")

    assert asyncio.run(read()) == pytest.approx(max(values), abs=0.1)


# -- Redis away --------------------------------------------------------------------------------
async def test_down_at_startup_then_back(
    tmp_path: Path, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    server = RedisServer(tmp_path / "late", port, password=PASSWORD)
    caplog.set_level(logging.INFO, "waterfall_asgi.cooldowns")
    async with opened(server.url, redis_prefix, max_backoff=0.05) as store:
        assert not store.connected
        health = store.health()
        assert health["state"] == "degraded"
        assert health["error"] == "ConnectionError"
        deadline = time.time() + 60
        assert await store.extend("p/m", deadline) == deadline  # kept locally
        assert await store.get("p/m") == deadline
        assert store.health()["local_cooldowns"] == 1
        with server:
            await until(lambda: store.connected, "the store connects")
            assert raw(server.url, redis_prefix + "p/m") == pytest.approx(deadline * 1e6, abs=5e4)
            assert store.health() == {
                "store": "redis",
                "state": "ok",
                "url": f"redis://:***@127.0.0.1:{port}/0",
                "prefix": redis_prefix,
            }
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # one per outage, however many reconnections failed
    assert "unavailable" in warnings[0].getMessage()
    assert any("is back" in r.getMessage() for r in caplog.records)
    assert PASSWORD not in caplog.text
    assert PASSWORD not in repr(store)
    assert PASSWORD not in str(store.health())


async def test_lost_and_restarted_empty(
    redis_server: RedisServer, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "waterfall_asgi.cooldowns")
    url = redis_server.url
    now = time.time()
    async with (
        opened(url, redis_prefix, max_backoff=0.05) as store,
        opened(url, redis_prefix, max_backoff=0.05) as other,
    ):
        await store.extend("before/outage", now + 120)
        await until(lambda: "before/outage" in other._mirror, "the other replica hears")
        redis_server.stop()
        await until(lambda: not store.connected, "the store notices")
        await store.extend("during/outage", now + 90)  # kept locally: no Redis call
        assert await store.get("during/outage") == now + 90
        assert await other.get("before/outage") is not None  # the mirror still serves
        redis_server.start()  # the same port, empty: it lost everything
        await until(lambda: store.connected and other.connected, "both reconnect")
        # both deadlines are back in Redis, and the other replica knows the new one
        assert raw(url, redis_prefix + "before/outage") is not None
        assert raw(url, redis_prefix + "during/outage") is not None
        await until(lambda: "during/outage" in other._mirror, "the other replica hears")
        assert store.outages == 1
        # ... and a second outage is a second warning (one each per replica)
        redis_server.stop()
        await until(lambda: not store.connected and not other.connected, "both notice")
        redis_server.start()
        await until(lambda: store.connected and other.connected, "both reconnect")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4
    assert store.outages == 2


async def test_a_hung_redis_never_holds_a_request(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    async with opened(redis_server.url, redis_prefix, timeout=0.05, max_backoff=0.05) as store:
        await store.extend("warm/up", time.time() + 5)
        assert await store.flush()
        redis_server.pause()
        try:
            async with asyncio.timeout(5):  # (a safety net: extend never waits for Redis)
                deadline = time.time() + 30
                assert await store.extend("p/m", deadline) == deadline
            await until(lambda: not store.connected, "the writer gives up after 50 ms")
            assert store.health()["error"] == "TimeoutError"
            assert await store.extend("q/m", deadline) == deadline
            assert await store.get("p/m") == deadline
            assert store.health()["local_cooldowns"] == 2
        finally:
            redis_server.resume()
        await until(lambda: store.connected, "the store reconnects")
        assert raw(redis_server.url, redis_prefix + "p/m") is not None
        assert raw(redis_server.url, redis_prefix + "q/m") is not None


async def test_a_wrong_password_is_an_outage_without_the_password(
    tmp_path: Path, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "waterfall_asgi.cooldowns")
    with RedisServer(tmp_path / "auth", password="the-right-one") as server:
        url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
        async with opened(url, redis_prefix) as store:
            assert not store.connected
            health = str(store.health())
    assert PASSWORD not in caplog.text
    assert PASSWORD not in health
    assert "***" in caplog.text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{PASSWORD}@h:1/0", "redis://:***@h:1/0"),
        (f"redis://user:{PASSWORD}@h/0", "redis://user:***@h/0"),
        (f"redis://h/0?password={PASSWORD}", "redis://h/0?password=%2A%2A%2A"),
        ("redis://user@h/0", "redis://user@h/0"),
        ("unix:///run/redis.sock?db=1", "unix:///run/redis.sock?db=1"),
    ],
)
async def test_urls_are_shown_without_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    store = RedisCooldownStore(url)
    assert PASSWORD not in repr(store)
    assert store.url == shown


async def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        RedisCooldownStore("redis://h/0", timeout=0)


def test_a_missing_redis_is_skipped_or_under_ci_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing there
    pytester.makeconftest('pytest_plugins = ["services"]\n')
    pytester.makepyfile("def test_needs_redis(redis_url):\n    pass\n")
    monkeypatch.delenv("WATERFALL_REQUIRE_SERVICES", raising=False)
    skipped = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    skipped.assert_outcomes(skipped=1)
    skipped.stdout.fnmatch_lines(["*REDIS_URL is set but nothing answers PING there*"])
    monkeypatch.setenv("WATERFALL_REQUIRE_SERVICES", "1")
    failed = pytester.runpytest("-p", "no:cacheprovider")
    failed.assert_outcomes(errors=1)
    failed.stdout.fnmatch_lines(["*WATERFALL_REQUIRE_SERVICES=1*"])
