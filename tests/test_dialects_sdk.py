"""Every dialect end to end with the official SDKs: ``openai`` (Chat Completions, the Responses
API) and ``anthropic`` (Messages) against the mounted router, on a loopback uvicorn server so
that streams really stream, with in-process fakes behind it.

Each test checks what the client sees (the SDK's own objects and exceptions) and what the router
wrote (its ledger row), against what the fakes journaled: the usage their answers carried, the
headers of their 429s, the tool calls they made from their seeds. The fakes and the router read
one clock, which stands still, so cooldown deadlines are exact.
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, Decimal
from typing import Any, Literal

import anthropic
import openai
import pytest

from waterfall_asgi import MemoryLedger, UsageRecord
from waterfall_asgi.middleware import WaterfallMiddleware
from waterfall_fakes import FakeNetwork, FakeProvider, FakeServer, LoopbackServer
from waterfall_fakes.dialects import plan_tool_call
from waterfall_fakes.provider import RecordedRequest

pytestmark = pytest.mark.loopback

START = 1_700_000_000.0
CLIENT_KEY = "sk-client-secret"
ALL_APIS = ("chat", "responses", "messages")
PRICES = {  # per token, in msat; fractions, so that the one rounding up shows
    "a": {"unit": "msat", "prompt": "0.15", "completion": "0.6"},
    "b": {"unit": "msat", "prompt": "0.35", "completion": "1.45", "request": "2"},
}
HELLO = "Say something nice"
WEATHER = "What is the weather in Paris?"
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
    },
    "required": ["city", "unit", "days"],
}
Mode = Literal["create", "create_stream", "stream_helper"]
MODES: tuple[Mode, ...] = ("create", "create_stream", "stream_helper")
"""The three ways an SDK asks: ``create``, ``create(stream=True)`` and the ``stream()`` helper."""
STREAMED: tuple[Mode, ...] = ("create_stream", "stream_helper")


# -- the stack: fakes, the router in front of them, the SDKs ---------------------------------
class ManualClock:
    """Wall-clock seconds that stand still at ``now`` (read by the router and the fakes)."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Stack:
    """Fakes ``a`` and ``b`` behind one router (chain ``fast``: a, then b), on loopback."""

    app: WaterfallMiddleware
    net: FakeNetwork
    ledger: MemoryLedger
    server: LoopbackServer
    finished: queue.Queue[UsageRecord]

    @property
    def a(self) -> FakeProvider:
        return self.net["a"]

    @property
    def b(self) -> FakeProvider:
        return self.net["b"]

    def openai(self, key: str = CLIENT_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.server.url, api_key=key, max_retries=0, timeout=10)

    def anthropic(self, **auth: str) -> anthropic.Anthropic:
        """The Anthropic SDK (it adds ``/v1`` itself); the client key as ``x-api-key`` unless
        ``auth`` says otherwise (``auth_token=...`` sends a Bearer token instead)."""
        auth = auth or {"api_key": CLIENT_KEY}
        return anthropic.Anthropic(base_url=self.server.root, max_retries=0, timeout=10, **auth)  # type: ignore[arg-type]

    def record(self) -> UsageRecord:
        """The ledger row of the request that finished last (the router saves it just after the
        response's last byte, then hands it to ``on_complete``: a bounded wait for that)."""
        done = self.finished.get(timeout=5)
        assert self.finished.empty()
        return self.ledger.records[done.id]

    def cooldowns(self) -> dict[str, float]:
        return asyncio.run(self.app.cooldowns.snapshot())


@pytest.fixture
def serve() -> Iterator[Callable[..., Stack]]:
    """Start a stack: ``serve(a=[...], b=[...])`` gives each fake its script, ``apis`` what
    both providers speak."""
    with ExitStack() as stack:

        def start(
            a: list[str] | tuple[str, ...] = (),
            b: list[str] | tuple[str, ...] = (),
            apis: tuple[str, ...] = ALL_APIS,
        ) -> Stack:
            clock = ManualClock()
            fakes = {
                h: FakeProvider(
                    name=h, api_key=f"sk-{h}-upstream", reply_words=6, script=list(s), clock=clock
                )
                for h, s in (("a", a), ("b", b))
            }
            config: dict[str, Any] = {
                "providers": {
                    h: {"base_url": f"http://{h}/v1", "api_key": f"sk-{h}-upstream", "apis": apis}
                    for h in fakes
                },
                "deployments": [
                    {"provider": h, "model": "fake-small", "price": PRICES[h]} for h in fakes
                ],
                "chains": {"fast": ["a/fake-small", "b/fake-small"]},
                "client_keys": [CLIENT_KEY],
            }
            net, ledger, finished = FakeNetwork(fakes), MemoryLedger(), queue.Queue[UsageRecord]()
            app = WaterfallMiddleware(
                None,
                config,
                transport=net,
                ledger=ledger,
                clock=clock,
                health_path=None,
                on_complete=finished.put,
            )
            server = stack.enter_context(LoopbackServer(app, lifespan="on"))
            return Stack(app, net, ledger, server, finished)

        yield start


# -- what the fakes said, to compare with ----------------------------------------------------
def journal_tokens(seen: RecordedRequest) -> tuple[int | None, int | None]:
    """The prompt and completion tokens of the usage the fake's answer carried, in its
    dialect's words (Anthropic's prompt includes what was read from or written to its cache);
    ``None`` when it carried none."""
    usage = seen.usage
    if usage is None:
        return None, None
    if "prompt_tokens" in usage:  # chat
        return usage["prompt_tokens"], usage["completion_tokens"]
    cached = usage.get("cache_creation_input_tokens", 0) + usage.get("cache_read_input_tokens", 0)
    return usage["input_tokens"] + cached, usage["output_tokens"]


def priced(host: str, prompt: int, completion: int) -> int:
    """What ``host``'s configured price makes of these tokens: exact, then rounded up once."""
    price = {k: Decimal(v) for k, v in PRICES[host].items() if k != "unit"}
    exact = prompt * price["prompt"] + completion * price["completion"] + price.get("request", 0)
    return int(exact.to_integral_value(rounding=ROUND_CEILING))


def assert_exact(
    record: UsageRecord, host: str, seen: RecordedRequest, status: str = "success"
) -> None:
    """The ledger row says ``host`` answered, with exactly the usage its answer carried (none
    when it carried none), priced exactly."""
    assert (record.status, record.provider) == (status, host), record
    prompt, completion = journal_tokens(seen)
    assert (record.prompt_tokens, record.completion_tokens) == (prompt, completion)
    if prompt is None or completion is None:
        assert record.cost is None
        return
    assert record.total_tokens == prompt + completion
    assert (record.cost, record.cost_unit) == (priced(host, prompt, completion), "msat")


def assert_fell_through(record: UsageRecord, first_status: int) -> None:
    """``a`` answered ``first_status`` (once or more), then ``b`` served."""
    trail = [(x["entry"], x["status"]) for x in record.attempts]
    assert trail[-1] == ("b/fake-small", 200)
    assert trail[:-1], trail
    assert set(trail[:-1]) == {("a/fake-small", first_status)}, trail


def sse_objects(body: bytes) -> list[dict[str, Any]]:
    """The JSON data of each event of an SSE body (``[DONE]`` left out)."""
    out = []
    for line in body.decode().replace("\r\n", "\n").split("\n"):
        if line.startswith("data:") and line[5:].strip() != "[DONE]":
            out.append(json.loads(line[5:]))
    return out


def fake_text(provider: FakeProvider) -> str:
    """The text of ``provider``'s last answer, in any dialect, streamed or not (a fresh twin of
    the fake replays its requests)."""
    twin = FakeProvider(provider.config)
    reply = None
    for r in provider.requests:
        reply = twin.handle(r.method, r.path, r.headers, r.body)
    assert reply is not None
    assert reply.status == 200
    if dict(reply.headers)["content-type"].startswith("application/json"):
        body = json.loads(reply.body)
        if "choices" in body:
            return str(body["choices"][0]["message"]["content"])
        if body.get("object") == "response":
            parts = [c for item in body["output"] for c in item.get("content", [])]
            return "".join(c["text"] for c in parts if c["type"] == "output_text")
        return "".join(c["text"] for c in body["content"] if c["type"] == "text")
    text = []
    for obj in sse_objects(reply.body):
        if obj.get("choices"):
            text.append(obj["choices"][0]["delta"].get("content") or "")
        elif obj.get("type") == "response.output_text.delta":
            text.append(obj["delta"])
        elif obj.get("type") == "content_block_delta" and obj["delta"]["type"] == "text_delta":
            text.append(obj["delta"]["text"])
    return "".join(text)


def assert_tool_call(s: Stack, api: str, name: str, arguments: str, call_id: str) -> None:
    """The call the client got is the one ``a`` made from the request it received (its name,
    its arguments to the character), and the ledger has its usage exactly."""
    seen = s.a.requests[-1]
    assert seen.number is not None
    plan = plan_tool_call(api, seen.json, True, None, None, s.a.config.seed, seen.number)  # type: ignore[arg-type]
    assert plan is not None
    assert (name, arguments, call_id) == (plan.name, plan.arguments, plan.call_id)
    parsed = json.loads(arguments)
    assert list(parsed) == ["city", "unit", "days"]
    assert parsed["unit"] == "celsius"
    assert isinstance(parsed["days"], int)
    assert_exact(s.record(), "a", seen)
    usage = seen.usage or {}
    assert usage.get("completion_tokens", usage.get("output_tokens")) == plan.tokens


def rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- OpenAI Chat Completions -----------------------------------------------------------------
CHAT_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA},
}


@pytest.mark.parametrize("how", ["header", "tool_choice"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_tool_calls_round_trip(serve: Callable[..., Stack], stream: bool, how: str) -> None:
    """A tool call the fake was asked for (``x-fake-behaviour: tool_call``) or that the
    request required (``tool_choice: required``)."""
    s = serve()
    ask: dict[str, Any] = {
        "model": "fast",
        "messages": [{"role": "user", "content": WEATHER}],
        "tools": [CHAT_TOOL],
    }
    if how == "header":
        ask["extra_headers"] = {"x-fake-behaviour": "tool_call"}
    else:
        ask["tool_choice"] = "required"
    with s.openai() as client:
        if not stream:
            completion = client.chat.completions.create(**ask)
            assert completion.choices[0].finish_reason == "tool_calls"
            (call,) = completion.choices[0].message.tool_calls or []
            assert call.type == "function"
            name, arguments, call_id = call.function.name, call.function.arguments, call.id
        else:
            with client.chat.completions.create(**ask, stream=True) as chunks:
                deltas = [c.choices[0] for c in chunks if c.choices]
            assert deltas[-1].finish_reason == "tool_calls"
            parts = [t for d in deltas for t in d.delta.tool_calls or []]
            assert {t.index for t in parts} == {0}
            assert parts[0].function is not None
            assert parts[0].function.name is not None
            assert parts[0].id is not None
            name, call_id = parts[0].function.name, parts[0].id
            arguments = "".join(t.function.arguments or "" for t in parts if t.function)
            assert len(parts) > 2  # the arguments came in fragments
    assert_tool_call(s, "chat", name, arguments, call_id)


# -- OpenAI Responses API --------------------------------------------------------------------
RESPONSES_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "parameters": WEATHER_SCHEMA,
    "strict": False,
}


def responses_text(client: openai.OpenAI, mode: Mode) -> str:
    """Ask ``fast`` through the Responses API in ``mode``; the text the SDK handed over."""
    if mode == "create":
        response = client.responses.create(model="fast", input=HELLO)
        assert response.status == "completed"
        return response.output_text
    if mode == "create_stream":
        with client.responses.create(model="fast", input=HELLO, stream=True) as events:
            seen = list(events)
        assert seen[-1].type == "response.completed"
        return "".join(e.delta for e in seen if e.type == "response.output_text.delta")
    with client.responses.stream(model="fast", input=HELLO) as stream:
        return stream.get_final_response().output_text


@pytest.mark.parametrize("mode", MODES)
def test_responses_a_429_falls_through_unseen(serve: Callable[..., Stack], mode: Mode) -> None:
    s = serve(a=["rate_limit:dialect=openai,seconds=5"])
    with s.openai() as client:
        text = responses_text(client, mode)
    assert text == fake_text(s.b)
    assert len(text.split()) == 6
    record = s.record()
    assert_fell_through(record, 429)
    assert_exact(record, "b", s.b.requests[-1])
    (refused,) = s.a.requests
    assert dict(refused.response_headers)["x-ratelimit-reset-requests"] == "5s"
    assert s.cooldowns()["a/fake-small"] == START + 5


@pytest.mark.parametrize("mode", MODES)
def test_responses_function_calls_round_trip(serve: Callable[..., Stack], mode: Mode) -> None:
    s = serve()
    ask: dict[str, Any] = {
        "model": "fast",
        "input": WEATHER,
        "tools": [RESPONSES_TOOL],
        "tool_choice": "required",
    }
    with s.openai() as client:
        if mode == "create_stream":
            with client.responses.create(**ask, stream=True) as events:
                seen = list(events)
            assert seen[-1].type == "response.completed"
            (added,) = [e for e in seen if e.type == "response.output_item.added"]
            assert added.item.type == "function_call"
            name, call_id = added.item.name, added.item.call_id
            fragments = [
                e.delta for e in seen if e.type == "response.function_call_arguments.delta"
            ]
            assert len(fragments) > 2
            arguments = "".join(fragments)
            (done,) = [e for e in seen if e.type == "response.function_call_arguments.done"]
            assert done.arguments == arguments
        else:
            if mode == "create":
                response = client.responses.create(**ask)
            else:
                with client.responses.stream(**ask) as stream:
                    response = stream.get_final_response()
            assert response.status == "completed"
            (item,) = response.output
            assert item.type == "function_call"
            name, arguments, call_id = item.name, item.arguments, item.call_id
    assert_tool_call(s, "responses", name, arguments, call_id)


RESPONSES_FAULTS = {  # the fault: the ledger's status, the error events the client reads
    "no_done": ("stream_incomplete", ["stream_incomplete"]),
    "truncate:events=6": ("stream_incomplete", ["stream_incomplete"]),
    "error_event:after=5": ("upstream_error", ["server_error"]),
    "cut:tokens=3": ("upstream_error", ["stream_interrupted"]),
}


@pytest.mark.parametrize("fault", list(RESPONSES_FAULTS))
def test_a_responses_stream_that_ends_without_response_completed_fails_in_the_sdk(
    serve: Callable[..., Stack], fault: str
) -> None:
    """The ``stream()`` helper raises; ``create(stream=True)`` hands over a last ``error``
    event (the Responses API's own way: the SDK raises for none of its events), the router's
    where straight from the provider the stream would just stop, or the provider's own. Nothing
    falls through once the answer began."""
    status, errors = RESPONSES_FAULTS[fault]
    s = serve(a=[fault, fault])
    with s.openai() as client:
        with pytest.raises(RuntimeError, match=r"Didn't receive a `response\.completed` event"):
            responses_text(client, "stream_helper")
        assert_exact(s.record(), "a", s.a.requests[-1], status=status)
        with client.responses.create(model="fast", input=HELLO, stream=True) as events:
            seen = list(events)
    assert_exact(s.record(), "a", s.a.requests[-1], status=status)
    kinds = [e.type for e in seen]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "error"
    assert "response.completed" not in kinds
    assert [e.code for e in seen if e.type == "error"] == errors
    assert s.b.requests == []


def test_a_failed_responses_stream_ends_with_response_failed(serve: Callable[..., Stack]) -> None:
    """``response.failed`` ends a stream: the client reads the provider's failed response, and
    nothing of the router's after it."""
    s = serve(a=["error_event:after=5,failed=true"])
    with (
        s.openai() as client,
        client.responses.create(model="fast", input=HELLO, stream=True) as events,
    ):
        seen = list(events)
    last = seen[-1]
    assert last.type == "response.failed"
    assert last.response.status == "failed"
    assert last.response.error is not None
    assert last.response.error.code == "server_error"
    assert "error" not in [e.type for e in seen]
    assert_exact(s.record(), "a", s.a.requests[-1], status="upstream_error")


def test_the_openai_sdks_key_opens_the_router_and_never_travels(
    serve: Callable[..., Stack],
) -> None:
    s = serve()
    with s.openai() as client:
        responses_text(client, "create")
        responses_text(client, "stream_helper")
    assert [r.path for r in s.a.requests] == ["/v1/responses"] * 2
    for seen in s.a.requests:
        assert seen.headers["authorization"] == "Bearer sk-a-upstream"
        assert "x-api-key" not in seen.headers
        assert not any(CLIENT_KEY in v for v in seen.headers.values()), seen.headers
    with s.openai("sk-wrong") as client, pytest.raises(openai.AuthenticationError) as refused:
        responses_text(client, "create")
    assert refused.value.code == "invalid_api_key"
    assert len(s.a.requests) == 2


# -- Anthropic Messages ----------------------------------------------------------------------
MESSAGES_TOOL: dict[str, Any] = {"name": "get_weather", "input_schema": WEATHER_SCHEMA}


def messages_text(client: anthropic.Anthropic, mode: Mode) -> str:
    """Ask ``fast`` through Messages in ``mode``; the text the SDK handed over."""
    ask: dict[str, Any] = {
        "model": "fast",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": HELLO}],
    }
    if mode == "create":
        message = client.messages.create(**ask)
        assert message.stop_reason == "end_turn"
        return "".join(b.text for b in message.content if b.type == "text")
    if mode == "create_stream":
        with client.messages.create(**ask, stream=True) as events:
            seen = list(events)
        assert seen[-1].type == "message_stop"
        return "".join(
            e.delta.text
            for e in seen
            if e.type == "content_block_delta" and e.delta.type == "text_delta"
        )
    with client.messages.stream(**ask) as stream:
        message = stream.get_final_message()
    assert message.stop_reason == "end_turn"
    return "".join(b.text for b in message.content if b.type == "text")


@pytest.mark.parametrize("mode", MODES)
def test_messages_an_anthropic_429_falls_through_unseen_and_cools_as_told(
    serve: Callable[..., Stack], mode: Mode
) -> None:
    s = serve(a=["rate_limit:dialect=anthropic,seconds=7"])
    with s.anthropic() as client:
        text = messages_text(client, mode)
    assert text == fake_text(s.b)
    record = s.record()
    assert_fell_through(record, 429)
    assert_exact(record, "b", s.b.requests[-1])
    # a cools down until exactly when its 429 said to come back, in both ways it said it
    (refused,) = s.a.requests
    said = dict(refused.response_headers)
    deadline = s.cooldowns()["a/fake-small"]
    assert deadline == refused.received_at + int(said["retry-after"]) == START + 7
    for limit in ("requests", "tokens", "input-tokens", "output-tokens"):
        assert said[f"anthropic-ratelimit-{limit}-remaining"] == "0"
        assert rfc3339(said[f"anthropic-ratelimit-{limit}-reset"]) == deadline
    # and is passed over until then
    with s.anthropic() as client:
        messages_text(client, "create")
    assert [(x["entry"], x["outcome"]) for x in s.record().attempts] == [
        ("a/fake-small", "cooling"),
        ("b/fake-small", "served"),
    ]
    assert len(s.a.requests) == 1


@pytest.mark.parametrize("mode", MODES)
def test_messages_a_529_falls_through_unseen(serve: Callable[..., Stack], mode: Mode) -> None:
    s = serve(a=["status:code=529"] * 2)
    with s.anthropic() as client:
        text = messages_text(client, mode)
    assert text == fake_text(s.b)
    record = s.record()
    assert_fell_through(record, 529)
    assert {r.status for r in s.a.requests} == {529}
    assert_exact(record, "b", s.b.requests[-1])


@pytest.mark.parametrize("mode", MODES)
def test_messages_tool_use_round_trips(serve: Callable[..., Stack], mode: Mode) -> None:
    s = serve()
    ask: dict[str, Any] = {
        "model": "fast",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": WEATHER}],
        "tools": [MESSAGES_TOOL],
        "tool_choice": {"type": "any"},
    }
    with s.anthropic() as client:
        if mode == "create_stream":
            with client.messages.create(**ask, stream=True) as events:
                seen = list(events)
            (start,) = [e for e in seen if e.type == "content_block_start"]
            assert start.content_block.type == "tool_use"
            name, call_id = start.content_block.name, start.content_block.id
            fragments = [
                e.delta.partial_json
                for e in seen
                if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
            ]
            assert len(fragments) > 2
            arguments = "".join(fragments)
            (stop,) = [e for e in seen if e.type == "message_delta"]
            assert stop.delta.stop_reason == "tool_use"
        else:
            if mode == "create":
                message = client.messages.create(**ask)
            else:
                with client.messages.stream(**ask) as stream:
                    message = stream.get_final_message()
            assert message.stop_reason == "tool_use"
            (block,) = message.content
            assert block.type == "tool_use"
            name, call_id = block.name, block.id
            arguments = json.dumps(block.input, separators=(",", ":"), ensure_ascii=False)
    assert_tool_call(s, "messages", name, arguments, call_id)


@pytest.mark.parametrize("fault", ["no_done", "truncate:events=6"])
def test_a_messages_stream_without_message_stop_raises_through_the_router(
    serve: Callable[..., Stack], fault: str
) -> None:
    # straight from the provider, Anthropic's SDK hands the partial message over, no error
    with (
        FakeServer(FakeProvider(script=[fault])) as direct,
        anthropic.Anthropic(base_url=direct.root, api_key="x", max_retries=0) as client,
        client.messages.stream(
            model="fake-small", max_tokens=100, messages=[{"role": "user", "content": HELLO}]
        ) as stream,
    ):
        partial = stream.get_final_message()
    assert partial.content
    # through the router, the same stream ends with an error event, which the SDK raises
    s = serve(a=[fault, fault])
    with s.anthropic() as client:
        for mode in STREAMED:
            with pytest.raises(anthropic.APIStatusError) as caught:
                messages_text(client, mode)
            assert caught.value.body == {
                "type": "error",
                "error": {
                    "type": "api_error",
                    "message": "The upstream stream ended without message_stop.",
                    "code": "stream_incomplete",
                },
            }
            record = s.record()
            assert record.error == "no message_stop"
            assert_exact(record, "a", s.a.requests[-1], status="stream_incomplete")
    assert s.b.requests == []  # nothing falls through once the answer began


@pytest.mark.parametrize(
    ("fault", "code"), [("error_event:after=5", None), ("cut:tokens=3", "stream_interrupted")]
)
@pytest.mark.parametrize("mode", STREAMED)
def test_a_messages_stream_that_fails_midway_raises_and_is_an_upstream_error(
    serve: Callable[..., Stack], mode: Mode, fault: str, code: str | None
) -> None:
    s = serve(a=[fault])
    with s.anthropic() as client, pytest.raises(anthropic.APIStatusError) as caught:
        messages_text(client, mode)
    error = caught.value.body["error"]  # type: ignore[index]
    assert error["type"] == "api_error"
    assert error.get("code") == code
    assert_exact(s.record(), "a", s.a.requests[-1], status="upstream_error")
    assert s.b.requests == []


@pytest.mark.parametrize("auth", ["api_key", "auth_token"])
def test_the_anthropic_sdks_key_opens_the_router_and_never_travels(
    serve: Callable[..., Stack], auth: str
) -> None:
    """The SDK sends the key as ``x-api-key`` (``api_key``) or as a Bearer token
    (``auth_token``); the provider gets its own key as ``x-api-key``, and nothing of the
    client's."""
    s = serve()
    with s.anthropic(**{auth: CLIENT_KEY}) as client:
        messages_text(client, "create")
        messages_text(client, "stream_helper")
        version = client.default_headers["anthropic-version"]
    assert [r.status for r in s.a.requests] == [200, 200]
    for seen in s.a.requests:
        assert seen.headers["x-api-key"] == "sk-a-upstream"
        assert "authorization" not in seen.headers
        assert seen.headers["anthropic-version"] == version  # the SDK's, passed through
        assert seen.headers["user-agent"].startswith("Anthropic/Python")
        assert not any(CLIENT_KEY in v for v in seen.headers.values()), seen.headers
        assert CLIENT_KEY.encode() not in seen.body
    # a wrong key is refused in Anthropic's words, before any provider is asked
    with s.anthropic(**{auth: "sk-wrong"}) as client:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            messages_text(client, "create")
        with pytest.raises(anthropic.AuthenticationError):
            messages_text(client, "create_stream")
    assert refused.value.body["error"]["code"] == "invalid_api_key"  # type: ignore[index]
    assert len(s.a.requests) == 2


# -- a dialect no entry speaks ---------------------------------------------------------------
def test_a_dialect_no_entry_speaks_is_a_400_in_each_sdks_error_class(
    serve: Callable[..., Stack],
) -> None:
    s = serve(apis=("chat",))
    with s.anthropic() as client, pytest.raises(anthropic.BadRequestError) as refused:
        messages_text(client, "create")
    assert refused.value.status_code == 400
    assert refused.value.body["error"]["code"] == "api_not_served"  # type: ignore[index]
    assert "'fast' is not served in the messages API" in refused.value.message
    assert s.record().error == "api_not_served"
    with s.openai() as client, pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="fast", input=HELLO)
    assert (caught.value.code, caught.value.param) == ("api_not_served", "model")
    assert "'fast' is not served in the responses API" in caught.value.message
    assert s.record().error == "api_not_served"
    assert s.a.requests == s.b.requests == []

    s = serve(apis=("responses", "messages"))
    with s.openai() as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": HELLO}])
    assert caught.value.code == "api_not_served"
    assert "'fast' is not served in the chat API" in caught.value.message
    assert s.record().error == "api_not_served"
    assert s.a.requests == s.b.requests == []
