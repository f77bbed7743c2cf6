"""The waterfall router, driven through ASGI directly, in front of in-process fakes."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import anyio
import pytest
from asgi_helpers import call, sse_data

from waterfall_asgi.cooldown import InMemoryCooldownStore
from waterfall_asgi.middleware import WaterfallMiddleware
from waterfall_fakes import FakeNetwork, FakeProvider

pytestmark = pytest.mark.anyio

SECRET_A = "sk-upstream-a-0123456789"
SECRET_B = "sk-upstream-b-9876543210"
CLIENT_KEY = "client-key-abcdef"
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "hello there"}]}
STREAM = {**CHAT, "stream": True}


class Clock:
    """A wall clock that moves only when told to."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(
    clock: Clock,
    scripts: dict[str, list[str]] | None = None,
    chain: list[str] | None = None,
    *,
    fakes: dict[str, dict[str, Any]] | None = None,
    first_byte: float = 0.2,
    **extra: Any,
) -> tuple[WaterfallMiddleware, FakeNetwork]:
    scripts = scripts or {}
    hosts = {"a", "b", "c"}
    net = FakeNetwork(
        {
            h: FakeProvider(
                name=h, script=scripts.get(h, []), clock=clock, **(fakes or {}).get(h, {})
            )
            for h in hosts
        }
    )
    secrets = {"a": SECRET_A, "b": SECRET_B, "c": "sk-c"}
    config: dict[str, Any] = {
        "providers": {
            h: {
                "base_url": f"http://{h}/v1",
                "api_key": secrets[h],
                "timeouts": {"first_byte": first_byte, "read": 0.2},
            }
            for h in sorted(hosts)
        },
        "chains": {"fast": chain or ["a/fake-small", "b/fake-medium", "c/fake-large"]},
        **extra,
    }
    return WaterfallMiddleware(None, config, transport=net, clock=clock), net


def chat_calls(net: FakeNetwork, host: str) -> int:
    return len(net[host].calls())


# -- falling through -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "behaviour",
    [
        "rate_limit",
        "insufficient_balance",
        "status:code=408",
        "status:code=500",
        "status:code=502",
        "status:code=503",
        "status:code=504",
        "status:code=401",
        "status:code=403",
        "hang",
    ],
)
@pytest.mark.parametrize("payload", [CHAT, STREAM], ids=["json", "stream"])
async def test_provider_failure_falls_through_to_next_entry(
    clock: Clock, behaviour: str, payload: dict[str, Any]
) -> None:
    # a transient failure (408, a 5xx without a hint) is retried once on the same entry first
    retried = behaviour.startswith("status:code=5") or behaviour == "status:code=408"
    app, net = make(clock, {"a": [behaviour, behaviour]}, policy={"backoff": 0})
    result = await call(app, "POST", "/v1/chat/completions", payload)
    assert result.status == 200
    assert result.headers["x-waterfall-provider"] == "b"
    assert result.headers["x-waterfall-model"] == "fake-medium"
    calls = (chat_calls(net, "a"), chat_calls(net, "b"), chat_calls(net, "c"))
    assert calls == ((2, 1, 0) if retried else (1, 1, 0))
    assert result.headers["x-waterfall-attempts"].startswith("a/fake-small ")
    # the entry's own model name went upstream
    assert net["b"].calls()[0].json["model"] == "fake-medium"
    if payload.get("stream"):
        assert sse_data(result.body)[-1] == "[DONE]"
    else:
        assert result.json()["object"] == "chat.completion"


@pytest.mark.parametrize("code", [400, 404, 413, 422])
async def test_request_errors_go_back_unchanged(clock: Clock, code: int) -> None:
    app, net = make(clock, {"a": [f"status:code={code}"]})
    result = await call(app, "POST", "/v1/chat/completions", CHAT)
    assert result.status == code
    direct = net["a"].calls()[0]
    assert direct.status == code
    assert result.json()["error"]["code"] == json.loads(_fake_error(code))["error"]["code"]
    assert (chat_calls(net, "a"), chat_calls(net, "b")) == (1, 0)
    assert await app.cooldowns.get("a/fake-small") is None


def _fake_error(code: int) -> bytes:
    fake = FakeProvider(script=[f"status:code={code}"])
    body = json.dumps(CHAT | {"model": "fake-small"}).encode()
    return fake.handle("POST", "/v1/chat/completions", {}, body).body


async def test_connect_error_is_retried_then_falls_through_without_cooling(clock: Clock) -> None:
    app, net = make(clock, policy={"default_cooldown": 12, "backoff": 0})
    net.down.add("a")
    result = await call(app, "POST", "/v1/chat/completions", CHAT)
    assert result.headers["x-waterfall-provider"] == "b"
    assert result.headers["x-waterfall-attempts"] == (
        "a/fake-small retried, a/fake-small connect_error, b/fake-medium 200"
    )
    # evidence, not a verdict: the next request tries a again
    assert await app.cooldowns.get("a/fake-small") is None
    net.down.discard("a")
    again = await call(app, "POST", "/v1/chat/completions", CHAT)
    assert again.headers["x-waterfall-provider"] == "a"


# -- cooldowns -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "seconds"),
    [
        ("rate_limit:dialect=retry-after,seconds=7", 7),
        ("rate_limit:dialect=retry-after,seconds=6.2", 7),
        ("rate_limit:dialect=retry-after-ms,seconds=2.5", 2.5),
        ("rate_limit:dialect=retry-after-date,seconds=9", 9),
        ("rate_limit:dialect=openai,seconds=383.456", 383.456),
        ("rate_limit:dialect=openai,seconds=0.5", 0.5),
        ("rate_limit:dialect=openrouter,seconds=4.25", 4.25),
        ("rate_limit:dialect=none", 30),
    ],
)
async def test_cooldown_lasts_as_long_as_the_provider_said(
    clock: Clock, spec: str, seconds: float
) -> None:
    app, net = make(clock, {"a": [spec]}, policy={"default_cooldown": 30})
    await call(app, "POST", "/v1/chat/completions", CHAT)
    until = await app.cooldowns.get("a/fake-small")
    assert until == pytest.approx(clock.now + seconds, abs=1e-6)
    # skipped without a call while cooling, tried again once it is over
    clock.advance(seconds - 0.01)
    second = await call(app, "POST", "/v1/chat/completions", CHAT)
    assert "a/fake-small cooling" in second.headers["x-waterfall-attempts"]
    assert chat_calls(net, "a") == 1
    clock.advance(0.02)
    third = await call(app, "POST", "/v1/chat/completions", CHAT)
    assert third.headers["x-waterfall-provider"] == "a"
    assert chat_calls(net, "a") == 2


async def test_cooldown_is_capped(clock: Clock) -> None:
    app, _ = make(
        clock, {"a": ["rate_limit:dialect=retry-after,seconds=99999"]}, policy={"max_cooldown": 60}
    )
    await call(app, "POST", "/v1/chat/completions", CHAT)
    assert await app.cooldowns.get("a/fake-small") == clock.now + 60


async def test_a_shorter_cooldown_never_shortens_a_longer_one(clock: Clock) -> None:
    store = InMemoryCooldownStore()
    await store.extend("a/fake-small", clock.now + 100)
    app, _ = make(clock, {"a": ["rate_limit:dialect=retry-after,seconds=5"]})
    app.cooldowns = store
    clock.advance(101)  # the old cooldown is over: a is tried and says 5 s
    await call(app, "POST", "/v1/chat/completions", CHAT)
    assert await store.get("a/fake-small") == clock.now + 5
    await store.extend("a/fake-small", clock.now + 1)
    assert await store.get("a/fake-small") == clock.now + 5


async def test_success_with_nothing_remaining_cools_down_preemptively(clock: Clock) -> None:
    # the fake's limiter: one request a minute, reported with OpenAI's headers
    app, net = make(clock, fakes={"a": {"limits": {"requests": 1, "window": 60}}})
    limited = net["a"]
    first = await call(app, "POST", "/v1/chat/completions", CHAT)
    assert first.headers["x-waterfall-provider"] == "a"
    assert await app.cooldowns.get("a/fake-small") == pytest.approx(clock.now + 60)
    second = await call(app, "POST", "/v1/chat/completions", CHAT)
    assert second.headers["x-waterfall-provider"] == "b"
    assert len(limited.calls()) == 1  # never asked again while it had nothing left


# -- all exhausted ---------------------------------------------------------------------------
@pytest.mark.parametrize("payload", [CHAT, STREAM], ids=["json", "stream"])
async def test_all_exhausted_is_503_with_retry_after_of_the_soonest_recovery(
    clock: Clock, payload: dict[str, Any]
) -> None:
    app, net = make(
        clock,
        {
            "a": ["rate_limit:dialect=retry-after,seconds=40"],
            "b": ["rate_limit:dialect=retry-after-ms,seconds=12.2"],
            "c": ["rate_limit:dialect=retry-after,seconds=20"],
        },
        policy={"default_cooldown": 30},
    )
    result = await call(app, "POST", "/v1/chat/completions", payload)
    assert result.status == 503
    assert result.headers["retry-after"] == "13"
    error = result.json()["error"]
    assert error["code"] == "all_providers_exhausted"
    assert error["type"] == "server_error"
    for entry in ("a/fake-small: HTTP 429", "b/fake-medium: HTTP 429", "c/fake-large: HTTP 429"):
        assert entry in error["message"]
    # every entry is under a provider's hint: a second request makes no upstream call at all
    again = await call(app, "POST", "/v1/chat/completions", payload)
    assert again.status == 503
    assert again.headers["retry-after"] == "13"
    assert "cooling down" in again.json()["error"]["message"]
    assert sum(chat_calls(net, h) for h in "abc") == 3
    clock.advance(12.3)
    assert (await call(app, "POST", "/v1/chat/completions", payload)).status == 200


# -- streaming acceptance --------------------------------------------------------------------
@pytest.mark.parametrize(
    "behaviour",
    [
        "truncate:events=0",  # 200 and then a clean close before any event
        "cut:bytes=0",  # 200 and the connection cut
        "cut:bytes=10",  # cut inside the first event
        "slow_first_byte:seconds=5",  # stalls past the first-byte timeout
        "error_event:after=0",  # an error before any content
        "error_event:after=0; line_endings:style=crlf",  # the same, parsed line by line
        "error_event:after=0; chunking:size=7",  # the same, in small reads
        "keepalive; truncate:events=0",  # only a comment, then nothing
    ],
)
async def test_stream_that_fails_before_its_first_event_falls_through(
    clock: Clock, behaviour: str
) -> None:
    # (each is retried once on the same entry first, but a timeout: its wait was spent already)
    app, net = make(clock, {"a": [behaviour, behaviour]}, policy={"backoff": 0})
    result = await call(app, "POST", "/v1/chat/completions", STREAM)
    assert result.status == 200
    assert result.headers["x-waterfall-provider"] == "b"
    data = sse_data(result.body)
    assert data[-1] == "[DONE]"
    assert all('"error"' not in d for d in data)
    # the client saw exactly one response: nothing from the failed attempt
    assert result.messages[0]["type"] == "http.response.start"
    assert chat_calls(net, "a") == (1 if behaviour.startswith("slow_first_byte") else 2)


async def test_stream_is_relayed_byte_for_byte(clock: Clock) -> None:
    app, _ = make(clock, {"a": ["chunking:size=3; line_endings:style=crlf; keepalive; fields"]})
    # the client opts out of usage, so nothing is injected and nothing removed
    opted_out = {**STREAM, "stream_options": {"include_usage": False}}
    result = await call(app, "POST", "/v1/chat/completions", opted_out)
    direct = FakeProvider(script=["chunking:size=3; line_endings:style=crlf; keepalive; fields"])
    reference = direct.handle(
        "POST", "/v1/chat/completions", {}, json.dumps(opted_out | {"model": "fake-small"}).encode()
    )
    assert result.body == reference.body
    assert result.finished


@pytest.mark.parametrize(
    ("behaviour", "code"),
    [("cut:bytes=900", "stream_interrupted"), ("slow_chunks:seconds=5", "stream_stalled")],
)
async def test_failure_after_acceptance_ends_with_an_sse_error_event(
    clock: Clock, behaviour: str, code: str
) -> None:
    app, _ = make(clock, {"a": [behaviour]})
    result = await call(app, "POST", "/v1/chat/completions", STREAM)
    assert result.status == 200
    assert result.headers["x-waterfall-provider"] == "a"
    last = json.loads(sse_data(result.body)[-1])
    assert last["error"]["code"] == code
    assert b"[DONE]" not in result.body
    assert result.finished


@pytest.mark.parametrize(
    ("gap", "first_byte"),
    [
        # the second 10-byte read of the first event comes 5 s late: each read is bounded by
        # `read` (0.2 s) even while the first-byte deadline (an hour) is far off
        (5, 3600),
        # every read comes within `read`, but the whole event takes seconds: the first-byte
        # deadline (0.3 s) bounds them all
        (0.1, 0.3),
    ],
)
async def test_a_first_event_late_by_either_timeout_falls_through(
    clock: Clock, gap: float, first_byte: float
) -> None:
    script = [f"chunking:size=10; slow_chunks:seconds={gap}"]
    app, _ = make(clock, {"a": script}, first_byte=first_byte)
    with anyio.fail_after(10):  # a hang guard, not a timing assertion
        result = await call(app, "POST", "/v1/chat/completions", STREAM)
    assert result.headers["x-waterfall-attempts"] == "a/fake-small timeout, b/fake-medium 200"


async def test_accept_on_headers_commits_without_waiting_for_an_event(clock: Clock) -> None:
    app, net = make(clock, {"a": ["truncate:events=0"]}, policy={"accept": "headers"})
    result = await call(app, "POST", "/v1/chat/completions", STREAM)
    assert result.headers["x-waterfall-provider"] == "a"
    assert chat_calls(net, "b") == 0


# -- routing ---------------------------------------------------------------------------------
async def test_model_name_routes_to_every_deployment_of_it_in_config_order(clock: Clock) -> None:
    app, net = make(
        clock,
        {"a": ["rate_limit"]},
        chain=["a/fake-small", "b/fake-medium"],
        deployments=["c/fake-small"],
    )
    result = await call(app, "POST", "/v1/chat/completions", {**CHAT, "model": "fake-small"})
    assert result.headers["x-waterfall-attempts"] == "c/fake-small 200"
    result = await call(app, "POST", "/v1/chat/completions", {**CHAT, "model": "b/fake-medium"})
    assert result.headers["x-waterfall-provider"] == "b"
    assert chat_calls(net, "a") == 0


async def test_default_chain_serves_requests_without_a_model(clock: Clock) -> None:
    app, _ = make(clock, default_chain="fast")
    no_model = {"messages": CHAT["messages"]}
    assert (await call(app, "POST", "/v1/chat/completions", no_model)).status == 200
    bare, _ = make(clock)
    result = await call(bare, "POST", "/v1/chat/completions", no_model)
    assert (result.status, result.json()["error"]["param"]) == (400, "model")


async def test_unknown_model_is_404_model_not_found(clock: Clock) -> None:
    app, net = make(clock)
    result = await call(app, "POST", "/v1/chat/completions", {**CHAT, "model": "gpt-9"})
    assert result.status == 404
    error = result.json()["error"]
    assert (error["code"], error["type"]) == ("model_not_found", "invalid_request_error")
    assert "fast" in error["message"]
    assert sum(len(net[h].requests) for h in "abc") == 0


async def test_embeddings_and_completions_use_the_waterfall(clock: Clock) -> None:
    app, net = make(clock, {"a": ["status:code=502"] * 2}, policy={"backoff": 0})
    result = await call(app, "POST", "/v1/embeddings", {"model": "fast", "input": ["x", "y"]})
    assert result.status == 200
    assert len(result.json()["data"]) == 2
    assert result.headers["x-waterfall-provider"] == "b"
    assert [r.path for r in net["b"].requests] == ["/v1/embeddings"]


async def test_models_lists_chains_and_models(clock: Clock) -> None:
    app, _ = make(clock)
    result = await call(app, "GET", "/v1/models")
    data = {m["id"]: m["waterfall"] for m in result.json()["data"]}
    assert data["fast"] == {
        "kind": "chain",
        "entries": ["a/fake-small", "b/fake-medium", "c/fake-large"],
        "apis": ["chat"],
    }
    assert data["fake-large"] == {"kind": "model", "entries": ["c/fake-large"], "apis": ["chat"]}


# -- edges and security ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/chat/completions", b"{not json", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b"[1, 2]", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b'{"model": "fast"}', 400, "missing_required_parameter"),
        ("POST", "/v1/embeddings", b'{"model": "fast"}', 400, "missing_required_parameter"),
        ("POST", "/v1/chat/completions", b'{"model": 3, "messages": []}', 400, "invalid_type"),
        (
            "POST",
            "/v1/chat/completions",
            b'{"model": "fast", "messages": [], "stream": "yes"}',
            400,
            "invalid_type",
        ),
        (
            "POST",
            "/v1/embeddings",
            b'{"model": "fast", "input": "x", "stream": true}',
            400,
            "invalid_value",
        ),
        ("GET", "/v1/chat/completions", None, 405, "method_not_allowed"),
        ("POST", "/v1/models", b"{}", 405, "method_not_allowed"),
        ("POST", "/health", b"{}", 405, "method_not_allowed"),
        ("GET", "/v1/unknown", None, 404, "unknown_url"),
    ],
)
async def test_bad_requests_get_openai_style_errors(
    clock: Clock, method: str, path: str, body: bytes | None, status: int, code: str
) -> None:
    app, net = make(clock)
    result = await call(app, method, path, body)
    assert result.status == status
    error = result.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert result.headers["content-type"] == "application/json"
    if status == 405:
        assert result.headers["allow"] in ("GET", "POST")
    assert sum(len(net[h].requests) for h in "abc") == 0


async def test_body_too_large_is_413(clock: Clock) -> None:
    app, net = make(clock, limits={"max_body_bytes": 100})
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 200}]}
    result = await call(app, "POST", "/v1/chat/completions", big)
    assert (result.status, result.json()["error"]["code"]) == (413, "request_too_large")
    parts = [b'{"model": "fast", "messages": [{"role": "user", "content": "', b"y" * 90, b'"}]}']
    streamed = await call(app, "POST", "/v1/chat/completions", body_parts=parts)
    assert streamed.status == 413
    declared = await call(
        app, "POST", "/v1/chat/completions", b"{}", headers={"content-length": "5000"}
    )
    assert declared.status == 413
    assert sum(len(net[h].requests) for h in "abc") == 0


@pytest.mark.parametrize(
    "auth", [None, "Bearer wrong", f"Basic {CLIENT_KEY}", "Bearer", f"Bearer {CLIENT_KEY}x"]
)
async def test_client_keys_are_required(clock: Clock, auth: str | None) -> None:
    app, net = make(clock, client_keys=[CLIENT_KEY, "another-key"])
    headers = {"authorization": auth} if auth else {}
    result = await call(app, "POST", "/v1/chat/completions", CHAT, headers)
    assert (result.status, result.json()["error"]["code"]) == (401, "invalid_api_key")
    assert CLIENT_KEY not in result.body.decode()
    assert sum(len(net[h].requests) for h in "abc") == 0
    ok = await call(
        app, "POST", "/v1/chat/completions", CHAT, {"authorization": "Bearer another-key"}
    )
    assert ok.status == 200
    health = await call(app, "GET", "/health")
    assert (health.status, health.json()) == (200, {"status": "ok"})


async def test_credentials_and_hop_by_hop_headers_never_reach_upstream(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app, net = make(clock, {"a": ["rate_limit"]}, client_keys=[CLIENT_KEY])
    headers = {
        "authorization": f"Bearer {CLIENT_KEY}",
        "x-api-key": CLIENT_KEY,
        "cookie": f"session={CLIENT_KEY}",
        "connection": "keep-alive, x-private",
        "x-private": "hop",
        "keep-alive": "timeout=5",
        "te": "trailers",
        "x-custom": "kept",
    }
    result = await call(app, "POST", "/v1/chat/completions", CHAT, headers)
    for host, secret in (("a", SECRET_A), ("b", SECRET_B)):
        sent = net[host].calls()[0].headers
        assert sent["authorization"] == f"Bearer {secret}"
        assert sent["x-custom"] == "kept"
        for name in ("x-api-key", "cookie", "x-private", "keep-alive", "te"):
            assert name not in sent
        assert "x-private" not in sent.get("connection", "")  # httpx sets its own
        assert CLIENT_KEY not in json.dumps(sent)
    everything = result.body.decode() + json.dumps(result.headers) + caplog.text
    for secret in (SECRET_A, SECRET_B, CLIENT_KEY):
        assert secret not in everything
    exhausted, _ = make(clock, {h: ["status:code=500"] * 2 for h in "abc"}, policy={"backoff": 0})
    failed = await call(exhausted, "POST", "/v1/chat/completions", CHAT)
    assert failed.status == 503
    for secret in (SECRET_A, SECRET_B):
        assert secret not in failed.body.decode() + caplog.text


async def test_one_structured_log_line_per_request(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="waterfall_asgi")
    app, _ = make(clock, {"a": ["rate_limit:dialect=retry-after,seconds=3"]})
    result = await call(app, "POST", "/v1/chat/completions", CHAT)
    lines = [r for r in caplog.records if r.name == "waterfall_asgi"]
    assert len(lines) == 1
    record = json.loads(lines[0].getMessage())
    assert record["id"] == result.headers["x-waterfall-request-id"]
    assert (record["status"], record["http_status"]) == ("success", 200)
    assert (record["provider"], record["upstream_model"]) == ("b", "fake-medium")
    assert [(a["entry"], a["outcome"], a["status"]) for a in record["attempts"]] == [
        ("a/fake-small", "status", 429),
        ("b/fake-medium", "served", 200),
    ]
    assert record["attempts"][0]["cooldown_s"] == 3
    assert record["duration_ms"] >= 0


async def test_client_disconnect_cancels_pending_attempts(clock: Clock) -> None:
    app, net = make(clock, {"a": ["hang"]}, first_byte=3600)  # hang "forever"
    gone = asyncio.Event()
    task = asyncio.ensure_future(call(app, "POST", "/v1/chat/completions", CHAT, disconnect=gone))
    for _ in range(5000):  # until the upstream call is under way (bounded)
        if net["a"].calls():
            break
        await asyncio.sleep(0.001)
    gone.set()
    with anyio.fail_after(5):  # a hang guard, not a timing assertion
        result = await task
    assert result.messages == []
    assert chat_calls(net, "b") == 0


async def test_first_event_larger_than_the_buffer_is_accepted_and_relayed_whole(
    clock: Clock,
) -> None:
    app, net = make(clock, {"a": ["big_event:size=100000,after=0"]})
    result = await call(app, "POST", "/v1/chat/completions", STREAM)
    assert result.headers["x-waterfall-provider"] == "a"
    assert len(sse_data(result.body)[0].encode()) >= 100_000
    assert sse_data(result.body)[-1] == "[DONE]"
    assert chat_calls(net, "b") == 0


async def test_extra_provider_headers_are_sent_upstream(clock: Clock) -> None:
    net2 = FakeNetwork({"a": FakeProvider(name="a", clock=clock)})
    mounted = WaterfallMiddleware(
        None,
        {
            "providers": {"a": {"base_url": "http://a/v1", "headers": {"api-key": "azure-key"}}},
            "chains": {"fast": ["a/fake-small"]},
        },
        transport=net2,
        clock=clock,
    )
    await call(mounted, "POST", "/v1/chat/completions", CHAT)
    assert net2["a"].calls()[0].headers["api-key"] == "azure-key"


@pytest.mark.parametrize("payload", [CHAT, STREAM], ids=["json", "stream"])
async def test_legacy_completions_use_the_waterfall(clock: Clock, payload: dict[str, Any]) -> None:
    app, net = make(clock, {"a": ["rate_limit"]})
    body = {"model": "fast", "prompt": "hello there", "stream": payload.get("stream", False)}
    result = await call(app, "POST", "/v1/completions", body)
    assert (result.status, result.headers["x-waterfall-provider"]) == (200, "b")
    assert [r.path for r in net["b"].requests] == ["/v1/completions"]
    if body["stream"]:
        assert sse_data(result.body)[-1] == "[DONE]"
        assert json.loads(sse_data(result.body)[0])["object"] == "text_completion"
    else:
        assert result.json()["object"] == "text_completion"


@pytest.mark.parametrize("behaviour", ["no_done; no_usage", "truncate:events=4", "cut:bytes=900"])
async def test_an_accepted_stream_never_ends_silently(clock: Clock, behaviour: str) -> None:
    """An answer cut short (a choice without its finish reason, or the usage chunk asked for
    missing) never looks whole to the client."""
    app, _ = make(clock, {"a": [behaviour]})
    result = await call(app, "POST", "/v1/chat/completions", STREAM)
    assert result.headers["x-waterfall-provider"] == "a"
    data = sse_data(result.body)
    assert "[DONE]" not in data
    code = json.loads(data[-1])["error"]["code"]
    assert code == ("stream_interrupted" if behaviour.startswith("cut") else "stream_incomplete")
    assert result.finished
    # everything before the error is whole events, unchanged
    assert all(json.loads(d).get("object") == "chat.completion.chunk" for d in data[:-1])


@pytest.mark.parametrize("asked", [True, False], ids=["client-asked", "router-injected"])
async def test_a_stream_without_done_is_whole_once_every_choice_finished_and_usage_came(
    clock: Clock, asked: bool
) -> None:
    """Cut after each of its events in turn (``truncate``, a clean close): only the cut after
    the usage chunk (every choice finished, usage asked for and sent) gets the [DONE] appended;
    any earlier cut ends with the error event."""
    body = {**STREAM, "stream_options": {"include_usage": True}} if asked else STREAM
    upstream = {**body, "model": "fake-small", "stream_options": {"include_usage": True}}
    whole = FakeProvider().handle("POST", "/v1/chat/completions", {}, json.dumps(upstream).encode())
    events = sse_data(whole.body)
    assert events[-1] == "[DONE]"
    assert '"usage":{' in events[-2]
    assert '"stop"' in events[-3]
    for kept in (len(events) - 3, len(events) - 2, len(events) - 1):
        app, _ = make(clock, {"a": [f"truncate:events={kept}"]})
        result = await call(app, "POST", "/v1/chat/completions", body)
        data = sse_data(result.body)
        relayed = events[:kept] if asked else events[: min(kept, len(events) - 2)]
        if kept == len(events) - 1:
            assert data == [*relayed, "[DONE]"]
            assert result.body.endswith(b"\n\ndata: [DONE]\n\n")
        else:
            assert data[:-1] == relayed
            assert json.loads(data[-1])["error"]["code"] == "stream_incomplete"
        assert result.finished


async def test_a_complete_stream_gets_no_error_event(clock: Clock) -> None:
    app, _ = make(clock, {"a": ["double_done"]})
    result = await call(app, "POST", "/v1/chat/completions", STREAM)
    assert sse_data(result.body)[-2:] == ["[DONE]", "[DONE]"]  # relayed as the upstream sent it


@pytest.mark.parametrize("behaviour", ["stall:events=3", "cut:tokens=2", "truncate:events=4"])
async def test_a_stream_that_fails_after_it_began_counts_against_its_entrys_circuit(
    clock: Clock, behaviour: str
) -> None:
    """A stream stalled, cut or closed mid-answer is a health signal: with a circuit that opens
    on one failure, the next request passes its entry over and is served by the next."""
    app, net = make(clock, {"a": [behaviour]}, policy={"circuit": {"failures": 1}, "retries": 0})
    first = await call(app, "POST", "/v1/chat/completions", STREAM)
    assert first.headers["x-waterfall-provider"] == "a"
    assert json.loads(sse_data(first.body)[-1])["error"]["code"].startswith("stream_")
    second = await call(app, "POST", "/v1/chat/completions", STREAM)
    assert second.headers["x-waterfall-attempts"].startswith("a/fake-small open_circuit")
    assert second.headers["x-waterfall-provider"] == "b"
    assert chat_calls(net, "a") == 1
    await app.shutdown()


async def test_a_whole_stream_without_done_is_no_failure_of_its_entry(clock: Clock) -> None:
    app, net = make(clock, {"a": ["no_done"]}, policy={"circuit": {"failures": 1}})
    await call(app, "POST", "/v1/chat/completions", STREAM)
    second = await call(app, "POST", "/v1/chat/completions", STREAM)
    assert second.headers["x-waterfall-attempts"] == "a/fake-small 200"
    assert chat_calls(net, "a") == 2
    await app.shutdown()
