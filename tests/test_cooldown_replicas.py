"""``[cooldowns]`` in the config, and routers sharing cooldowns through Redis: the middleware
builds the store, opens and closes it with lifespan, reports it in ``/health``, and keeps
serving whatever Redis does (stopped and restarted under load: no failed request)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, cast

import pytest
from asgi_helpers import call
from services import RedisServer, free_port

from waterfall_asgi import (
    ConfigError,
    InMemoryCooldownStore,
    PostgresLedger,
    RedisCooldownStore,
    WaterfallMiddleware,
    load_config,
)
from waterfall_asgi.cli import main
from waterfall_fakes import FakeNetwork, FakeProvider

PASSWORD = "pw-DISTINCTIVE-cooldowns-9f3"
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "Hello"}]}


def config(**cooldowns: Any) -> dict[str, Any]:
    return {
        "providers": {
            h: {"base_url": f"http://{h}/v1", "timeouts": {"first_byte": 2, "read": 2}}
            for h in "ab"
        },
        "chains": {"fast": ["a/fake-small", "b/fake-small"]},
        "ledger": {"path": None},
        "cooldowns": cooldowns,
    }


# -- config ------------------------------------------------------------------------------------
def test_no_url_keeps_cooldowns_in_this_process() -> None:
    app = WaterfallMiddleware(None, config())
    assert isinstance(app.cooldowns, InMemoryCooldownStore)
    assert load_config(config()).cooldowns.url is None


def test_a_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:6399/2"
    monkeypatch.setenv("WF_TEST_REDIS_URL", url)
    loaded = load_config(config(url_env="WF_TEST_REDIS_URL", prefix="fleet-a:", timeout=0.02))
    assert loaded.cooldowns.url is not None
    assert loaded.cooldowns.url.get_secret_value() == url
    assert PASSWORD not in repr(loaded)
    app = WaterfallMiddleware(None, loaded)
    store = app.cooldowns
    assert isinstance(store, RedisCooldownStore)
    assert (store.prefix, store.timeout, store.url) == (
        "fleet-a:",
        0.02,
        "redis://:***@127.0.0.1:6399/2",
    )


@pytest.mark.parametrize(
    ("cooldowns", "message"),
    [
        ({"url_env": "WF_TEST_UNSET_VAR"}, "cooldowns.url_env: environment variable"),
        ({"url": f"http://:{PASSWORD}@h/0"}, "cooldowns: url must start with redis://"),
        ({"url": f"redis://:{PASSWORD}@h/0", "timeout": 0}, "cooldowns.timeout:"),
        ({"url": f"redis://:{PASSWORD}@h/0", "prefix": ""}, "cooldowns.prefix:"),
        ({"host": "h"}, "cooldowns.host: unknown setting"),
    ],
)
def test_mistakes_name_the_key_never_the_url(cooldowns: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config(**cooldowns))
    text = str(caught.value)
    assert message.replace("Value error, ", "") in text
    assert PASSWORD not in text


def test_a_url_in_an_env_var_with_a_bad_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WF_TEST_REDIS_URL", f"memcached://:{PASSWORD}@h")
    with pytest.raises(ConfigError, match="the URL in WF_TEST_REDIS_URL must start") as caught:
        load_config(config(url_env="WF_TEST_REDIS_URL"))
    assert PASSWORD not in str(caught.value)


def test_the_docs_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-a")
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-b")
    monkeypatch.setenv("WATERFALL_REDIS_URL", f"redis://:{PASSWORD}@cache.internal:6379/0")
    monkeypatch.setenv("WATERFALL_LEDGER_URL", f"postgresql://wf:{PASSWORD}@db.internal:5432/usage")
    example = Path(__file__).parent.parent / "docs" / "examples" / "replicas.toml"
    app = WaterfallMiddleware(None, example)
    assert isinstance(app.ledger, PostgresLedger)
    assert (app.ledger.url, app.ledger.lease) == ("postgresql://wf:***@db.internal:5432/usage", 30)
    store = app.cooldowns
    assert isinstance(store, RedisCooldownStore)
    assert (store.url, store.prefix) == ("redis://:***@cache.internal:6379/0", "waterfall:prod:")
    assert (store.timeout, store.connect_timeout, store.heartbeat) == (0.05, 0.25, 1.0)


def test_check_config_says_where_cooldowns_are_shared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "router.toml"
    path.write_text(
        '[providers.a]\nbase_url = "http://127.0.0.1:9/v1"\n'
        f'[cooldowns]\nurl = "redis://:{PASSWORD}@cache:6379/0"\nprefix = "fleet:"\n',
        encoding="utf-8",
    )
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out == (
        f"{path}: OK — 1 providers, chains: none; "
        "cooldowns shared in Redis at redis://:***@cache:6379/0 (prefix fleet:)\n"
    )
    path.write_text(
        '[providers.a]\nbase_url = "http://127.0.0.1:9/v1"\n'
        f'[cooldowns]\nurl = "rediss//:{PASSWORD}@cache"\n',
        encoding="utf-8",
    )
    assert main(["check-config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "cooldowns: url must start with redis://" in err
    assert PASSWORD not in out + err


# -- replicas ----------------------------------------------------------------------------------
def replica(url: str, prefix: str, net: FakeNetwork) -> WaterfallMiddleware:
    return WaterfallMiddleware(None, config(url=url, prefix=prefix), transport=net)


@pytest.mark.anyio
async def test_a_429_on_one_replica_is_honoured_by_the_others(
    redis_url: str, redis_prefix: str
) -> None:
    net = FakeNetwork(
        {
            "a": FakeProvider(name="a", script=["rate_limit:dialect=retry-after,seconds=30"]),
            "b": FakeProvider(name="b"),
        }
    )
    replicas = [replica(redis_url, redis_prefix, net) for _ in range(3)]
    for app in replicas:
        await app.startup()
    try:
        first = await call(replicas[0], "POST", "/v1/chat/completions", CHAT)
        assert first.status == 200
        assert first.headers["x-waterfall-provider"] == "b"
        for app in replicas:  # the next request anywhere: a is cooling
            store = app.cooldowns
            assert isinstance(store, RedisCooldownStore)
            for _ in range(500):
                if await store.get("a/fake-small") is not None:
                    break
                await asyncio.sleep(0.01)
        for i in range(30):
            result = await call(replicas[i % 3], "POST", "/v1/chat/completions", CHAT)
            assert (result.status, result.headers["x-waterfall-provider"]) == (200, "b")
        assert len(net["a"].calls()) == 1  # a was called exactly once, by the whole fleet
        health = await call(replicas[1], "GET", "/health")
        assert health.status == 200
        assert health.json() == {
            "status": "ok",
            "cooldowns": {
                "store": "redis",
                "state": "ok",
                "url": redis_url,
                "prefix": redis_prefix,
            },
        }
    finally:
        for app in replicas:
            await app.shutdown()
    for app in replicas:
        assert not app.cooldowns.connected  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_redis_down_at_startup_degrades_and_serves(
    redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    net = FakeNetwork({h: FakeProvider(name=h) for h in "ab"})
    app = replica(url, redis_prefix, net)
    await app.startup()  # does not fail
    try:
        result = await call(app, "POST", "/v1/chat/completions", CHAT)
        assert result.status == 200
        health = await call(app, "GET", "/health")
        assert health.status == 200
        body = health.json()
        assert body["status"] == "degraded"
        assert body["cooldowns"]["state"] == "degraded"
        assert body["cooldowns"]["error"] == "ConnectionError"
        assert body["cooldowns"]["url"].startswith("redis://:***@127.0.0.1:")
        assert PASSWORD not in health.body.decode()
    finally:
        await app.shutdown()
    assert PASSWORD not in caplog.text
    warnings = [r for r in caplog.records if r.name == "waterfall_asgi.cooldowns"]
    assert len(warnings) == 1


@pytest.mark.anyio
async def test_redis_stopped_and_restarted_under_load_fails_no_request(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    # a rate-limits one request in five for 20 ms: cooldowns are recorded all along, in
    # Redis, then locally while it is away, then in Redis again
    script = ["rate_limit:dialect=retry-after-ms,seconds=0.02", "", "", "", ""]
    net = FakeNetwork(
        {"a": FakeProvider(name="a", script=script, cycle=True), "b": FakeProvider(name="b")}
    )
    replicas = [replica(redis_server.url, redis_prefix, net) for _ in range(2)]
    for app in replicas:
        await app.startup()
    stores = [app.cooldowns for app in replicas]
    assert all(isinstance(s, RedisCooldownStore) for s in stores)
    stores = cast(list[RedisCooldownStore], stores)
    assert all(s.connected for s in stores)
    statuses: list[int] = []
    finished = asyncio.Event()

    async def client(n: int) -> None:
        for i in range(2000):  # bounded; the operator ends the load sooner
            if finished.is_set():
                return
            result = await call(replicas[(n + i) % 2], "POST", "/v1/chat/completions", CHAT)
            statuses.append(result.status)
            await asyncio.sleep(0)  # (the fakes answer in-process: let Redis's replies in)

    async def wait_for(condition: Any, what: str) -> None:
        for _ in range(2000):  # bounded: at most ~10 s
            if condition():
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"never happened: {what} ({len(statuses)} requests)")

    async def operator() -> None:
        try:
            await wait_for(lambda: len(statuses) >= 150, "150 requests")
            redis_server.stop()
            mark = len(statuses)
            await wait_for(lambda: not any(s.connected for s in stores), "both degraded")
            await wait_for(lambda: len(statuses) >= mark + 150, "150 requests without Redis")
            redis_server.start()
            await wait_for(lambda: all(s.connected for s in stores), "both reconnected")
            mark = len(statuses)
            await wait_for(lambda: len(statuses) >= mark + 150, "150 requests after")
        finally:
            finished.set()

    try:
        await asyncio.gather(operator(), *(client(n) for n in range(8)))
    finally:
        for app in replicas:
            await app.shutdown()
    assert len(statuses) >= 450
    assert set(statuses) == {200}
    # (at least the one: on a host short of CPU a reconnection under load may time out once)
    assert all(s.outages >= 1 for s in stores)
    assert len(net["a"].calls()) > 0
    assert len(net["b"].calls()) > 0


@pytest.mark.anyio
async def test_a_hung_redis_under_load_fails_no_request(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    script = ["rate_limit:dialect=retry-after-ms,seconds=0.02", "", ""]
    net = FakeNetwork(
        {"a": FakeProvider(name="a", script=script, cycle=True), "b": FakeProvider(name="b")}
    )
    app = replica(redis_server.url, redis_prefix, net)
    await app.startup()
    store = app.cooldowns
    assert isinstance(store, RedisCooldownStore)
    assert store.connected
    statuses: list[int] = []
    degraded: list[dict[str, Any]] = []
    finished = asyncio.Event()

    async def client() -> None:
        for _ in range(3000):  # bounded; the operator ends the load sooner
            if finished.is_set():
                return
            result = await call(app, "POST", "/v1/chat/completions", CHAT)
            statuses.append(result.status)
            await asyncio.sleep(0)

    async def wait_for(condition: Any, what: str) -> None:
        for _ in range(2000):  # bounded: at most ~10 s
            if condition():
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"never happened: {what} ({len(statuses)} requests)")

    async def operator() -> None:
        try:
            await wait_for(lambda: len(statuses) >= 100, "100 requests")
            redis_server.pause()  # connections stay open; nothing answers
            try:
                await wait_for(lambda: not store.connected, "the store gives up on Redis")
                degraded.append((await call(app, "GET", "/health")).json())
                mark = len(statuses)
                await wait_for(lambda: len(statuses) >= mark + 100, "100 requests while hung")
            finally:
                redis_server.resume()
            await wait_for(lambda: store.connected, "the store is back")
            mark = len(statuses)
            await wait_for(lambda: len(statuses) >= mark + 100, "100 requests after")
        finally:
            finished.set()

    try:
        await asyncio.gather(operator(), *(client() for _ in range(6)))
    finally:
        await app.shutdown()
    assert set(statuses) == {200}
    assert len(statuses) >= 300
    assert degraded[0]["status"] == "degraded"
    assert degraded[0]["cooldowns"]["error"] == "TimeoutError"
