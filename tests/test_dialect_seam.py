"""The dialect seam: providers declare the APIs they speak, and the router sends a request only
to entries whose provider speaks its API (the others are passed over, with that reason)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgi_helpers import call

from waterfall_asgi import DIALECTS, MemoryLedger
from waterfall_asgi.config import ConfigError, load_config
from waterfall_asgi.middleware import WaterfallMiddleware
from waterfall_asgi.sse import SSEParser
from waterfall_fakes import FakeNetwork, FakeProvider

pytestmark = pytest.mark.anyio

CHAT = {"model": "fast", "messages": [{"role": "user", "content": "hello there"}]}


def make(
    apis: dict[str, list[str]], chain: list[str] | None = None
) -> tuple[WaterfallMiddleware, FakeNetwork, MemoryLedger]:
    net = FakeNetwork({h: FakeProvider(name=h) for h in apis})
    config: dict[str, Any] = {
        "providers": {
            h: {"base_url": f"http://{h}/v1", "api_key": f"sk-{h}-secret", "apis": spoken}
            for h, spoken in apis.items()
        },
        "chains": {"fast": chain or [f"{h}/fake-small" for h in apis]},
    }
    ledger = MemoryLedger()
    return WaterfallMiddleware(None, config, transport=net, ledger=ledger), net, ledger


async def test_an_entry_whose_provider_does_not_speak_the_api_is_passed_over() -> None:
    app, net, ledger = make({"a": ["responses"], "b": ["chat", "responses"]})
    result = await call(app, "POST", "/v1/chat/completions", CHAT)
    assert result.status == 200
    assert result.headers["x-waterfall-provider"] == "b"
    assert result.headers["x-waterfall-attempts"] == "a/fake-small skipped_api, b/fake-small 200"
    assert net["a"].requests == []
    (record,) = ledger.records.values()
    assert [(a["entry"], a["outcome"]) for a in record.attempts] == [
        ("a/fake-small", "skipped_api"),
        ("b/fake-small", "served"),
    ]
    assert record.status == "success"


async def test_a_chain_no_provider_of_which_speaks_the_api_is_refused_plainly() -> None:
    app, net, ledger = make({"a": ["responses"], "b": ["responses"]})
    result = await call(app, "POST", "/v1/chat/completions", CHAT)
    assert result.status == 400
    error = result.json()["error"]
    assert error["code"] == "api_not_served"
    assert error["param"] == "model"
    assert "'fast' is not served in the chat API" in error["message"]
    assert net["a"].requests == net["b"].requests == []
    (record,) = ledger.records.values()
    assert (record.status, record.http_status, record.error) == ("rejected", 400, "api_not_served")


async def test_models_says_which_apis_each_chain_and_model_serves() -> None:
    app, _, _ = make({"a": ["messages"], "b": ["responses", "chat"]})
    result = await call(app, "GET", "/v1/models")
    listed = {m["id"]: m["waterfall"]["apis"] for m in result.json()["data"]}
    # in the order of the built-in dialects, whatever order the config lists them in
    assert listed["fast"] == ["chat", "responses", "messages"]
    assert listed["fake-small"] == ["chat", "responses", "messages"]


def test_apis_default_to_chat_and_are_checked() -> None:
    base = {"providers": {"a": {"base_url": "http://a/v1"}}}
    assert load_config(base).providers["a"].apis == ("chat",)
    twice = {"providers": {"a": {"base_url": "http://a/v1", "apis": ["chat", "chat"]}}}
    assert load_config(twice).providers["a"].apis == ("chat",)
    with pytest.raises(ConfigError, match="apis"):
        load_config({"providers": {"a": {"base_url": "http://a/v1", "apis": ["soap"]}}})
    with pytest.raises(ConfigError, match="apis"):
        load_config({"providers": {"a": {"base_url": "http://a/v1", "apis": []}}})


async def test_every_dialect_route_answers_under_the_prefix() -> None:
    app, _, _ = make({"a": ["chat"]})
    for dialect in DIALECTS.values():
        for route in dialect.routes:
            result = await call(app, "GET", "/v1" + route)
            assert result.status == 405, route
            assert result.headers["allow"] == "POST"


# -- Anthropic Messages: keys, versions and errors in its own ways ----------------------------
HELLO = {
    "model": "fast",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "Say hello"}],
}


def anthropic_router(
    client_keys: tuple[str, ...] = (), **fakes: FakeProvider
) -> tuple[WaterfallMiddleware, FakeNetwork, MemoryLedger]:
    net = FakeNetwork(fakes)
    config: dict[str, Any] = {
        "providers": {
            h: {"base_url": f"http://{h}/v1", "api_key": f"sk-{h}-upstream", "apis": ["messages"]}
            for h in fakes
        },
        "chains": {"fast": [f"{h}/fake-small" for h in fakes]},
        "client_keys": list(client_keys),
    }
    ledger = MemoryLedger()
    return WaterfallMiddleware(None, config, transport=net, ledger=ledger), net, ledger


@pytest.mark.parametrize(
    "auth", [{"x-api-key": "client-key"}, {"authorization": "Bearer client-key"}]
)
async def test_messages_clients_authenticate_either_way_and_upstreams_get_x_api_key(
    auth: dict[str, str],
) -> None:
    app, net, ledger = anthropic_router(("client-key",), a=FakeProvider(api_key="sk-a-upstream"))
    result = await call(app, "POST", "/v1/messages", HELLO, auth)
    assert result.status == 200, result.body
    assert result.json()["type"] == "message"
    (seen,) = net["a"].requests
    assert seen.headers["x-api-key"] == "sk-a-upstream"
    assert "authorization" not in seen.headers  # the client's credentials never travel
    assert seen.headers["anthropic-version"] == "2023-06-01"  # the default, none sent
    (record,) = ledger.records.values()
    assert (record.prompt_tokens, record.completion_tokens) == (
        seen.usage["input_tokens"],  # type: ignore[index]
        seen.usage["output_tokens"],  # type: ignore[index]
    )


async def test_messages_pass_the_clients_anthropic_version_and_beta_through() -> None:
    app, net, _ = anthropic_router(a=FakeProvider())
    headers = {"anthropic-version": "2026-10-21", "anthropic-beta": "tools-2026-01-01"}
    assert (await call(app, "POST", "/v1/messages", HELLO, headers)).status == 200
    (seen,) = net["a"].requests
    assert seen.headers["anthropic-version"] == "2026-10-21"
    assert seen.headers["anthropic-beta"] == "tools-2026-01-01"


async def test_messages_errors_come_in_anthropics_shape_with_openais_fields() -> None:
    app, _, _ = anthropic_router(("client-key",), a=FakeProvider())
    refused = await call(app, "POST", "/v1/messages", HELLO)
    assert refused.status == 401
    assert refused.json() == {
        "type": "error",
        "error": {
            "type": "authentication_error",
            "message": "Missing or invalid API key: send 'x-api-key: <key>' or "
            "'Authorization: Bearer <key>'.",
            "code": "invalid_api_key",
            "param": None,
        },
    }
    missing = await call(
        app, "POST", "/v1/messages", {"model": "fast", "messages": []}, {"x-api-key": "client-key"}
    )
    assert missing.status == 400
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert missing.json()["error"]["param"] == "max_tokens"


async def test_a_529_falls_through_and_the_client_never_sees_it() -> None:
    app, net, ledger = anthropic_router(
        a=FakeProvider(script=["status:code=529"] * 4), b=FakeProvider()
    )
    result = await call(app, "POST", "/v1/messages", {**HELLO, "stream": True})
    assert result.status == 200
    assert result.headers["x-waterfall-provider"] == "b"
    assert result.body.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    (record,) = ledger.records.values()
    assert record.status == "success"
    assert [a["status"] for a in record.attempts] == [529, 529, 200]
    assert record.completion_tokens == net["b"].requests[0].usage["output_tokens"]  # type: ignore[index]


async def test_a_messages_stream_without_message_stop_ends_with_an_anthropic_error_event() -> None:
    app, _, ledger = anthropic_router(a=FakeProvider(script=["no_done"]))
    result = await call(app, "POST", "/v1/messages", {**HELLO, "stream": True})
    assert result.status == 200
    last = result.body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert last.startswith(b"event: error\ndata: ")
    error = json.loads(last.split(b"data: ", 1)[1])
    assert error["type"] == "error"
    assert error["error"]["type"] == "api_error"
    assert error["error"]["code"] == "stream_incomplete"
    (record,) = ledger.records.values()
    assert (record.status, record.error) == ("stream_incomplete", "no message_stop")


async def test_the_routers_responses_error_event_is_numbered_after_the_last_event() -> None:
    net = FakeNetwork({"a": FakeProvider(script=["truncate:events=5"])})
    config = {
        "providers": {"a": {"base_url": "http://a/v1", "apis": ["responses"]}},
        "chains": {"fast": ["a/fake-small"]},
    }
    app = WaterfallMiddleware(None, config, transport=net, ledger=MemoryLedger())
    result = await call(
        app, "POST", "/v1/responses", {"model": "fast", "input": "Hi", "stream": True}
    )
    events = SSEParser().feed(result.body)
    numbers = [json.loads(e.data)["sequence_number"] for e in events]
    assert numbers == list(range(6))  # five relayed as they were, then the router's own
    assert events[-1].event == "error"
    assert json.loads(events[-1].data)["code"] == "stream_incomplete"
