"""The Responses API and Anthropic Messages dialects of the fakes, fault by fault, in process.

Every fault a chat request can get has its form in each dialect here: the 429 header dialects,
truncation and cuts, the missing terminal event, split UTF-8, error events mid-stream, the 529
overload, slow chunks and stalls; plus tool calls and the exact usage the journal records.
The official SDKs drive the same routes over loopback in ``test_dialect_sdks.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from waterfall_fakes import (
    BEHAVIOUR_HEADER,
    FakeProvider,
    Limits,
    Reply,
    count_input_tokens,
    entry_json,
    hint_seconds,
)
from waterfall_fakes.dialects import argument_fragments, offered_tools

NOW = 1_700_000_000.0
MODEL = "fake-small"
RESPONSES, MESSAGES_PATH = "/v1/responses", "/v1/messages"
ANTHROPIC = {"anthropic-version": "2023-06-01"}
TEXT_INPUT = "Say hello in five words"
RESP_BODY: dict[str, Any] = {"model": MODEL, "input": TEXT_INPUT}
MSG_BODY: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 100,
    "messages": [{"role": "user", "content": TEXT_INPUT}],
}
WORDS = 12
PROMPT = 3 + len(TEXT_INPUT.split())
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
    },
    "required": ["city"],
}


def clock() -> float:
    return NOW


def fake(**config: Any) -> FakeProvider:
    return FakeProvider(clock=clock, **config)


def post(
    provider: FakeProvider,
    path: str,
    body: dict[str, Any],
    spec: str | None = None,
    **headers: str,
) -> Reply:
    hdrs = {**(ANTHROPIC if path == MESSAGES_PATH else {}), **headers}
    if spec is not None:
        hdrs[BEHAVIOUR_HEADER] = spec
    return provider.handle("POST", path, hdrs, json.dumps(body).encode())


def sse(body: bytes) -> list[tuple[str | None, Any]]:
    """(event name, parsed data) of every event; data that is not JSON is kept as text."""
    out: list[tuple[str | None, Any]] = []
    text = body.decode().replace("\r\n", "\n").replace("\r", "\n")
    for block in text.split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        if data:
            joined = "\n".join(data)
            try:
                out.append((name, json.loads(joined)))
            except ValueError:
                out.append((name, joined))
    return out


def names(body: bytes) -> list[str | None]:
    return [n for n, _ in sse(body)]


def stream(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "stream": True}


# -- the Responses API ---------------------------------------------------------------------
def test_responses_json_answer_has_the_official_shape_and_exact_usage() -> None:
    p = fake()
    reply = post(p, RESPONSES, RESP_BODY)
    assert reply.status == 200
    obj = json.loads(reply.body)
    assert obj["object"] == "response"
    assert obj["status"] == "completed"
    assert obj["id"].startswith("resp_")
    assert obj["model"] == MODEL
    [item] = obj["output"]
    assert item["type"] == "message"
    assert item["role"] == "assistant"
    assert item["status"] == "completed"
    [part] = item["content"]
    assert part["type"] == "output_text"
    assert len(part["text"].split()) == WORDS
    assert obj["usage"] == {
        "input_tokens": PROMPT,
        "input_tokens_details": {"cache_write_tokens": 0, "cached_tokens": 0},
        "output_tokens": WORDS,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": PROMPT + WORDS,
    }
    assert p.requests[-1].usage == obj["usage"]
    assert entry_json(p.requests[-1])["usage"] == obj["usage"]


def test_responses_stream_is_typed_events_without_done() -> None:
    p = fake()
    reply = post(p, RESPONSES, stream(RESP_BODY))
    events = sse(reply.body)
    kinds = [n for n, _ in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * WORDS,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert b"[DONE]" not in reply.body
    for i, (name, data) in enumerate(events):
        assert data["type"] == name
        assert data["sequence_number"] == i
    deltas = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    assert events[-4][1]["text"] == deltas
    final = events[-1][1]["response"]
    assert final["status"] == "completed"
    assert final["usage"]["input_tokens"] == PROMPT
    assert final["usage"]["output_tokens"] == WORDS
    assert final["output"][0]["content"][0]["text"] == deltas
    assert p.requests[-1].usage == final["usage"]
    # the same words as the JSON answer of the same request
    again = json.loads(post(fake(), RESPONSES, RESP_BODY).body)
    assert again["output"][0]["content"][0]["text"] != ""


def test_responses_input_items_and_instructions_count() -> None:
    body = {
        "model": MODEL,
        "instructions": "be brief",
        "input": [
            {"role": "user", "content": "one two three"},
            {"role": "user", "content": [{"type": "input_text", "text": "four five"}]},
        ],
    }
    assert count_input_tokens("responses", body) == 5 + 6 + 5
    obj = json.loads(post(fake(), RESPONSES, body).body)
    assert obj["usage"]["input_tokens"] == 16
    assert obj["instructions"] == "be brief"


def test_responses_max_output_tokens_is_incomplete() -> None:
    body = {**RESP_BODY, "max_output_tokens": 5}
    obj = json.loads(post(fake(), RESPONSES, body).body)
    assert obj["status"] == "incomplete"
    assert obj["incomplete_details"] == {"reason": "max_output_tokens"}
    assert obj["usage"]["output_tokens"] == 5
    events = sse(post(fake(), RESPONSES, stream(body)).body)
    assert events[-1][0] == "response.incomplete"
    assert events[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_responses_content_filter_after_words_is_incomplete() -> None:
    events = sse(post(fake(), RESPONSES, stream(RESP_BODY), "content_filter:after=2").body)
    assert events[-1][0] == "response.incomplete"
    assert events[-1][1]["response"]["incomplete_details"] == {"reason": "content_filter"}
    assert events[-1][1]["response"]["usage"]["output_tokens"] == 2


def test_responses_errors_keep_openai_shape() -> None:
    p = fake()
    missing = post(p, RESPONSES, {"model": MODEL})
    assert missing.status == 400
    assert json.loads(missing.body)["error"]["param"] == "input"
    unknown = post(p, RESPONSES, {**RESP_BODY, "model": "nope"})
    assert unknown.status == 404
    assert json.loads(unknown.body)["error"]["code"] == "model_not_found"
    bad = post(p, RESPONSES, {**RESP_BODY, "input": 3})
    assert bad.status == 400
    assert json.loads(bad.body)["error"]["code"] == "invalid_type"


def test_responses_error_event_mid_stream() -> None:
    reply = post(fake(), RESPONSES, stream(RESP_BODY), "error_event:after=5,code=server_error")
    events = sse(reply.body)
    assert len(events) == 6
    name, data = events[-1]
    assert name == "error"
    assert data == {
        "type": "error",
        "code": "server_error",
        "message": "The server had an error while processing your request.",
        "param": None,
        "sequence_number": 5,
    }


def test_responses_failed_event() -> None:
    spec = "error_event:after=4,failed=true,code=rate_limit_exceeded,message=slow down"
    events = sse(post(fake(), RESPONSES, stream(RESP_BODY), spec).body)
    name, data = events[-1]
    assert name == "response.failed"
    assert data["sequence_number"] == 4
    assert data["response"]["status"] == "failed"
    assert data["response"]["error"] == {"code": "rate_limit_exceeded", "message": "slow down"}
    assert data["response"]["usage"] is None


# -- Anthropic Messages ------------------------------------------------------------------
def test_messages_json_answer_has_anthropics_shape_and_exact_usage() -> None:
    p = fake()
    reply = post(p, MESSAGES_PATH, MSG_BODY)
    assert reply.status == 200
    assert dict(reply.headers)["request-id"].startswith("req_")
    obj = json.loads(reply.body)
    assert obj["type"] == "message"
    assert obj["role"] == "assistant"
    assert obj["id"].startswith("msg_")
    assert obj["model"] == MODEL
    assert obj["stop_reason"] == "end_turn"
    assert obj["stop_sequence"] is None
    [block] = obj["content"]
    assert block["type"] == "text"
    assert len(block["text"].split()) == WORDS
    assert obj["usage"] == {
        "input_tokens": PROMPT,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": WORDS,
        "service_tier": "standard",
    }
    assert p.requests[-1].usage == obj["usage"]


def test_messages_stream_events_in_anthropics_order() -> None:
    p = fake()
    reply = post(p, MESSAGES_PATH, stream(MSG_BODY))
    events = sse(reply.body)
    assert [n for n, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * WORDS,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    for name, data in events:
        assert data["type"] == name
    start = events[0][1]["message"]
    assert start["usage"]["input_tokens"] == PROMPT
    assert start["content"] == []
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert len(text.split()) == WORDS
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": WORDS},
    }
    assert p.requests[-1].usage == {
        "input_tokens": PROMPT,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": WORDS,
        "service_tier": "standard",
    }
    assert b"[DONE]" not in reply.body


def test_messages_system_and_blocks_count() -> None:
    body = {
        **MSG_BODY,
        "system": [{"type": "text", "text": "be very brief"}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "one two"}]},
            {"role": "assistant", "content": "three"},
            {"role": "user", "content": "four five six"},
        ],
    }
    assert count_input_tokens("messages", body) == 6 + 5 + 4 + 6
    assert json.loads(post(fake(), MESSAGES_PATH, body).body)["usage"]["input_tokens"] == 21


def test_messages_max_tokens_stops_with_max_tokens() -> None:
    obj = json.loads(post(fake(), MESSAGES_PATH, {**MSG_BODY, "max_tokens": 3}).body)
    assert obj["stop_reason"] == "max_tokens"
    assert obj["usage"]["output_tokens"] == 3


def test_messages_needs_max_tokens_version_and_key() -> None:
    p = fake(api_key="sk-ant-test")
    body = {k: v for k, v in MSG_BODY.items() if k != "max_tokens"}
    ok_key = {"x-api-key": "sk-ant-test"}
    no_max = post(p, MESSAGES_PATH, body, **ok_key)
    assert no_max.status == 400
    assert json.loads(no_max.body) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }
    no_version = p.handle("POST", MESSAGES_PATH, ok_key, json.dumps(MSG_BODY).encode())
    assert no_version.status == 400
    assert "anthropic-version" in json.loads(no_version.body)["error"]["message"]
    wrong = post(p, MESSAGES_PATH, MSG_BODY, **{"x-api-key": "nope"})
    assert wrong.status == 401
    assert json.loads(wrong.body)["error"]["type"] == "authentication_error"
    assert post(p, MESSAGES_PATH, MSG_BODY, **ok_key).status == 200
    bearer = post(p, MESSAGES_PATH, MSG_BODY, authorization="Bearer sk-ant-test")
    assert bearer.status == 200
    unknown = post(p, MESSAGES_PATH, {**MSG_BODY, "model": "nope"}, **ok_key)
    assert unknown.status == 404
    assert json.loads(unknown.body)["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (529, "overloaded_error"),
        (500, "api_error"),
        (503, "api_error"),
        (504, "timeout_error"),
        (403, "permission_error"),
        (413, "request_too_large"),
    ],
)
def test_messages_status_errors_in_anthropics_shape(code: int, kind: str) -> None:
    reply = post(fake(), MESSAGES_PATH, MSG_BODY, f"status:code={code}")
    assert reply.status == code
    body = json.loads(reply.body)
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    assert set(body) == {"type", "error"}
    assert set(body["error"]) == {"type", "message"}


def test_overloaded_529_says_overloaded() -> None:
    body = json.loads(post(fake(), MESSAGES_PATH, MSG_BODY, "status:code=529").body)
    assert body["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    chat = fake().handle(
        "POST",
        "/v1/chat/completions",
        {BEHAVIOUR_HEADER: "status:code=529"},
        json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}).encode(),
    )
    assert chat.status == 529
    assert json.loads(chat.body)["error"]["code"] == "overloaded"


def test_messages_error_event_mid_stream_is_anthropics() -> None:
    spec = "error_event:after=4,code=overloaded_error,message=Overloaded"
    events = sse(post(fake(), MESSAGES_PATH, stream(MSG_BODY), spec).body)
    assert [n for n, _ in events][-1] == "error"
    assert len(events) == 5
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    default = sse(post(fake(), MESSAGES_PATH, stream(MSG_BODY), "error_event").body)
    assert default[-1][1]["error"]["type"] == "api_error"


# -- the 429 header dialects, in every API --------------------------------------------------
@pytest.mark.parametrize("path", [RESPONSES, MESSAGES_PATH])
@pytest.mark.parametrize(
    "dialect",
    ["retry-after", "retry-after-date", "retry-after-ms", "openai", "openrouter", "anthropic"],
)
def test_rate_limit_in_every_header_dialect(path: str, dialect: str) -> None:
    body = RESP_BODY if path == RESPONSES else MSG_BODY
    reply = post(fake(), path, body, f"rate_limit:dialect={dialect},seconds=7")
    assert reply.status == 429
    headers = dict(reply.headers)
    assert hint_seconds(429, headers, NOW) == pytest.approx(7.0, abs=1e-6)
    err = json.loads(reply.body)
    if path == MESSAGES_PATH:
        assert err["type"] == "error"
        assert err["error"]["type"] == "rate_limit_error"
    else:
        assert err["error"]["code"] == "rate_limit_exceeded"


def test_anthropic_rate_limit_headers() -> None:
    reply = post(fake(), MESSAGES_PATH, MSG_BODY, "rate_limit:dialect=anthropic,seconds=2.5")
    headers = dict(reply.headers)
    assert headers["retry-after"] == "3"
    reset = "2023-11-14T22:13:23Z"  # NOW + 2.5 s, rounded up to the second
    for what in ("requests", "tokens", "input-tokens", "output-tokens"):
        assert headers[f"anthropic-ratelimit-{what}-limit"] == "1"
        assert headers[f"anthropic-ratelimit-{what}-remaining"] == "0"
        assert headers[f"anthropic-ratelimit-{what}-reset"] == reset


def test_the_verdict_reads_anthropics_reset_headers_alone() -> None:
    reply = post(fake(), MESSAGES_PATH, MSG_BODY, "rate_limit:dialect=anthropic,seconds=2.5")
    headers = {k: v for k, v in reply.headers if k.startswith("anthropic-")}
    assert hint_seconds(429, headers, NOW) == pytest.approx(3.0)  # reset rounded up


def test_anthropic_limiter_reports_on_success_and_429() -> None:
    p = fake(limits=Limits(requests=1, window=60, dialect="anthropic"))
    ok = dict(post(p, MESSAGES_PATH, MSG_BODY).headers)
    assert ok["anthropic-ratelimit-requests-limit"] == "1"
    assert ok["anthropic-ratelimit-requests-remaining"] == "0"
    assert ok["anthropic-ratelimit-requests-reset"] == "2023-11-14T22:14:20Z"
    assert "retry-after" not in ok
    limited = post(p, MESSAGES_PATH, MSG_BODY)
    assert limited.status == 429
    assert dict(limited.headers)["retry-after"] == "60"
    assert json.loads(limited.body)["error"]["type"] == "rate_limit_error"


# -- stream faults in both dialects -----------------------------------------------------------
TERMINAL = {RESPONSES: "response.completed", MESSAGES_PATH: "message_stop"}
BODIES = {RESPONSES: RESP_BODY, MESSAGES_PATH: MSG_BODY}
BOTH = pytest.mark.parametrize("path", [RESPONSES, MESSAGES_PATH])


@BOTH
def test_no_done_leaves_out_the_terminal_event(path: str) -> None:
    whole = names(post(fake(), path, stream(BODIES[path])).body)
    cut = names(post(fake(), path, stream(BODIES[path]), "no_done").body)
    assert whole[-1] == TERMINAL[path]
    assert cut == whole[:-1]


@BOTH
def test_double_done_repeats_the_terminal_event(path: str) -> None:
    got = names(post(fake(), path, stream(BODIES[path]), "double_done").body)
    assert got[-2:] == [TERMINAL[path]] * 2


@BOTH
def test_truncate_keeps_the_first_events(path: str) -> None:
    whole = post(fake(), path, stream(BODIES[path])).body
    short = post(fake(), path, stream(BODIES[path]), "truncate:events=3").body
    assert names(short) == names(whole)[:3]
    assert whole.startswith(short)


@BOTH
def test_cut_after_tokens_breaks_off_mid_answer(path: str) -> None:
    p = fake()
    reply = post(p, path, stream(BODIES[path]), "cut:tokens=2,bytes=5")
    assert reply.cut
    whole = post(fake(), path, stream(BODIES[path])).body
    assert whole.startswith(reply.body)
    assert len(reply.body) < len(whole)
    deltas = [d for n, d in sse(reply.body) if isinstance(d, dict) and "delta" in d]
    assert len(deltas) == 2
    assert p.requests[-1].usage is None or path == MESSAGES_PATH
    if path == MESSAGES_PATH:  # message_start's usage only: the output is not known
        assert p.requests[-1].usage is not None
        assert p.requests[-1].usage["output_tokens"] == 1


@BOTH
def test_split_utf8_chunking_keeps_the_bytes(path: str) -> None:
    whole = post(fake(), path, stream(BODIES[path])).body
    reply = post(fake(), path, stream(BODIES[path]), "chunking:size=1")
    assert reply.body == whole
    assert all(len(c) == 1 for c in reply.chunks)
    assert any(c[0] >= 0x80 for c in reply.chunks)  # multi-byte characters split


@BOTH
def test_slow_chunks_and_stall(path: str) -> None:
    slow = post(fake(), path, stream(BODIES[path]), "slow_chunks:seconds=0.25")
    assert slow.delays[0] == 0
    assert set(slow.delays[1:]) == {0.25}
    stalled = post(fake(), path, stream(BODIES[path]), "stall:events=2,seconds=3")
    assert 3 in stalled.delays
    before = b"".join(stalled.chunks[: stalled.delays.index(3)])
    assert len(sse(before)) == 2


@BOTH
def test_keepalive_line_endings_and_ids(path: str) -> None:
    reply = post(fake(), path, stream(BODIES[path]), "keepalive:every=2; line_endings; fields")
    assert b"\r\n" in reply.body
    assert b": keep-alive" in reply.body
    events = sse(reply.body)
    assert [n for n, _ in events] == names(post(fake(), path, stream(BODIES[path])).body)
    assert b"id: 1\r\n" in reply.body


@BOTH
def test_malformed_and_big_events(path: str) -> None:
    bad = sse(post(fake(), path, stream(BODIES[path]), "malformed_event:after=3").body)
    assert isinstance(bad[3][1], str)  # not JSON
    big = post(fake(), path, stream(BODIES[path]), "big_event:size=70000,after=3")
    assert max(len(line) for line in big.body.split(b"\n")) >= 70_000


@BOTH
def test_no_usage(path: str) -> None:
    p = fake()
    events = sse(post(p, path, stream(BODIES[path]), "no_usage").body)
    assert p.requests[-1].usage is None
    if path == RESPONSES:
        assert events[-1][1]["response"]["usage"] is None
    else:
        assert "usage" not in events[0][1]["message"]
        assert "usage" not in events[-2][1]


@BOTH
def test_hang_and_slow_first_byte(path: str) -> None:
    assert post(fake(), path, BODIES[path], "hang:seconds=2").headers_delay == 2
    assert post(fake(), path, BODIES[path], "hang").headers_delay is None
    assert post(fake(), path, stream(BODIES[path]), "slow_first_byte:seconds=1").delays[0] == 1


@BOTH
def test_context_length_and_content_filter(path: str) -> None:
    reply = post(fake(), path, BODIES[path], "context_length_exceeded:style=anthropic")
    assert reply.status == 400
    err = json.loads(reply.body)
    message = err["error"]["message"]
    assert message.startswith("prompt is too long:")
    refused = post(fake(), path, BODIES[path], "content_filter")
    assert refused.status == 400


def test_messages_content_filter_after_is_a_refusal() -> None:
    obj = json.loads(post(fake(), MESSAGES_PATH, MSG_BODY, "content_filter:after=1").body)
    assert obj["stop_reason"] == "refusal"
    assert obj["usage"]["output_tokens"] == 1


def test_messages_prefill_is_honoured_when_the_model_does() -> None:
    body = {
        **MSG_BODY,
        "messages": [*MSG_BODY["messages"], {"role": "assistant", "content": "Well then"}],
    }
    obj = json.loads(post(fake(), MESSAGES_PATH, body, "prefill:mode=honour").body)
    assert obj["content"][0]["text"].startswith(" ")
    assert obj["usage"]["output_tokens"] == WORDS - 2
    rejected = post(fake(), MESSAGES_PATH, body, "prefill:mode=reject")
    assert rejected.status == 400
    assert json.loads(rejected.body)["error"]["type"] == "invalid_request_error"


# -- gates, rules and chaos on the new routes ------------------------------------------------
def test_rules_and_gates_apply_to_the_new_routes() -> None:
    p = fake(
        rules=[
            {
                "name": "anthropic-busy",
                "path": "/v1/messages",
                "nth": 2,
                "behaviours": "status:code=529",
            },
            {"name": "tools", "tools": True, "behaviours": "tool_call"},
        ]
    )
    assert post(p, MESSAGES_PATH, MSG_BODY).status == 200
    assert post(p, MESSAGES_PATH, MSG_BODY).status == 529
    assert post(p, MESSAGES_PATH, MSG_BODY).status == 200
    assert post(p, RESPONSES, RESP_BODY).status == 200
    assert p.requests[1].answered_by == ("rule:anthropic-busy",)
    gated = post(p, RESPONSES, RESP_BODY, "when:skip=1; status:code=503")
    assert gated.status == 200
    assert post(p, RESPONSES, RESP_BODY, "when:skip=1; status:code=503").status == 503
    tools = [{"type": "function", "name": "lookup", "parameters": {}}]
    obj = json.loads(post(p, RESPONSES, {**RESP_BODY, "tools": tools}).body)
    assert obj["output"][0]["type"] == "function_call"


def test_seeded_chaos_is_the_same_in_every_dialect_order() -> None:
    def run() -> list[int]:
        p = fake(seed=7, rules=[{"p": 0.5, "behaviours": "status:code=529"}])
        return [post(p, path, BODIES[path]).status for path in [RESPONSES, MESSAGES_PATH] * 10]

    first = run()
    assert first == run()
    assert set(first) == {200, 529}


def test_responses_and_messages_count_as_script_steps() -> None:
    p = fake(script=["status:code=529", "rate_limit:dialect=anthropic", "ok"])
    assert post(p, MESSAGES_PATH, MSG_BODY).status == 529
    assert post(p, RESPONSES, RESP_BODY).status == 429
    assert post(p, MESSAGES_PATH, MSG_BODY).status == 200
    assert [r.number for r in p.requests] == [0, 1, 2]


# -- tool calls ----------------------------------------------------------------------------------
CHAT_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}
]
RESP_TOOLS = [{"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA}]
MSG_TOOLS = [{"name": "get_weather", "description": "weather", "input_schema": WEATHER_SCHEMA}]


def test_tools_are_read_in_each_dialect() -> None:
    assert offered_tools("chat", {"tools": CHAT_TOOLS})[0][0] == "get_weather"
    assert offered_tools("responses", {"tools": RESP_TOOLS})[0][0] == "get_weather"
    assert offered_tools("messages", {"tools": MSG_TOOLS})[0][0] == "get_weather"
    web = {"type": "web_search_20250305", "name": "web_search"}
    assert offered_tools("messages", {"tools": [web]}) == []


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": TEXT_INPUT}], **extra}


def test_chat_tool_call_json_and_stream() -> None:
    p = fake()
    reply = post(p, "/v1/chat/completions", chat_body(tools=CHAT_TOOLS), "tool_call")
    choice = json.loads(reply.body)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    args = json.loads(call["function"]["arguments"])
    assert set(args) == {"city", "unit", "days"}
    assert args["unit"] == "celsius"
    fragments = argument_fragments(call["function"]["arguments"])
    usage = json.loads(reply.body)["usage"]
    assert usage["completion_tokens"] == len(fragments)
    body = chat_body(tools=CHAT_TOOLS, stream=True, stream_options={"include_usage": True})
    streamed = post(fake(), "/v1/chat/completions", body, "tool_call")
    chunks = [d for _, d in sse(streamed.body) if isinstance(d, dict)]
    first = chunks[0]["choices"][0]["delta"]["tool_calls"][0]
    assert first["id"] == call["id"]
    assert first["function"] == {
        "name": "get_weather",
        "arguments": "",
    }
    joined = "".join(
        c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
        for c in chunks[1:]
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    )
    assert joined == call["function"]["arguments"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == len(fragments)


def test_chat_tool_choice_required_calls_without_a_behaviour() -> None:
    named = {"type": "function", "function": {"name": "other"}}
    tools = [*CHAT_TOOLS, {"type": "function", "function": {"name": "other", "parameters": {}}}]
    obj = json.loads(
        post(fake(), "/v1/chat/completions", chat_body(tools=tools, tool_choice=named)).body
    )
    call = obj["choices"][0]["message"]["tool_calls"][0]["function"]
    assert call == {"name": "other", "arguments": "{}"}
    plain = json.loads(post(fake(), "/v1/chat/completions", chat_body(tools=tools)).body)
    assert plain["choices"][0]["finish_reason"] == "stop"
    none = chat_body(tools=tools, tool_choice="none")
    refused = json.loads(post(fake(), "/v1/chat/completions", none, "tool_call").body)
    assert refused["choices"][0]["finish_reason"] == "stop"
    no_tools = json.loads(post(fake(), "/v1/chat/completions", chat_body(), "tool_call").body)
    assert no_tools["choices"][0]["finish_reason"] == "stop"


def test_given_arguments_are_sent() -> None:
    spec = 'tool_call:name=get_weather,arguments={"city":"Oslo"}'
    obj = json.loads(post(fake(), MESSAGES_PATH, {**MSG_BODY, "tools": MSG_TOOLS}, spec).body)
    assert obj["content"] == [
        {
            "type": "tool_use",
            "id": obj["content"][0]["id"],
            "name": "get_weather",
            "input": {"city": "Oslo"},
        }
    ]
    assert obj["stop_reason"] == "tool_use"
    assert obj["usage"]["output_tokens"] == len(argument_fragments('{"city":"Oslo"}'))


def test_responses_function_call_json_and_stream() -> None:
    body = {**RESP_BODY, "tools": RESP_TOOLS, "tool_choice": "required"}
    obj = json.loads(post(fake(), RESPONSES, body).body)
    [item] = obj["output"]
    assert item["type"] == "function_call"
    assert item["status"] == "completed"
    assert item["name"] == "get_weather"
    assert item["call_id"].startswith("call_")
    assert item["id"].startswith("fc_")
    tokens = len(argument_fragments(item["arguments"]))
    assert obj["usage"]["output_tokens"] == tokens
    events = sse(post(fake(), RESPONSES, stream(body)).body)
    kinds = [n for n, _ in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * tokens,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = events[2][1]["item"]
    assert added["arguments"] == ""
    assert added["status"] == "in_progress"
    deltas = "".join(d["delta"] for n, d in events if n.endswith("arguments.delta"))
    assert deltas == item["arguments"] == events[-3][1]["arguments"]
    assert events[-1][1]["response"]["output"] == [item]


def test_messages_tool_use_json_and_stream() -> None:
    body = {**MSG_BODY, "tools": MSG_TOOLS, "tool_choice": {"type": "any"}}
    obj = json.loads(post(fake(), MESSAGES_PATH, body).body)
    [block] = obj["content"]
    assert block["type"] == "tool_use"
    assert block["id"].startswith("toolu_")
    text = json.dumps(block["input"], ensure_ascii=False, separators=(",", ":"))
    assert obj["usage"]["output_tokens"] == len(argument_fragments(text))
    events = sse(post(fake(), MESSAGES_PATH, stream(body)).body)
    assert events[1][1]["content_block"] == {**block, "input": {}}
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert json.loads(partial) == block["input"]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert events[-2][1]["usage"]["output_tokens"] == len(argument_fragments(text))


def test_tool_calls_are_deterministic() -> None:
    body = {**MSG_BODY, "tools": MSG_TOOLS}
    a = post(fake(seed=3), MESSAGES_PATH, body, "tool_call").body
    assert a == post(fake(seed=3), MESSAGES_PATH, body, "tool_call").body
    assert a != post(fake(seed=4), MESSAGES_PATH, body, "tool_call").body


def test_a_rules_messages_pattern_reads_every_dialect() -> None:
    p = fake(rules=[{"messages": "secret", "behaviours": "status:code=503"}])
    system = {**MSG_BODY, "system": [{"type": "text", "text": "a secret"}]}
    assert post(p, MESSAGES_PATH, system).status == 503
    items = {
        **RESP_BODY,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "secret"}]}],
    }
    assert post(p, RESPONSES, items).status == 503
    assert post(p, RESPONSES, {**RESP_BODY, "instructions": "secret"}).status == 503
    assert post(p, RESPONSES, RESP_BODY).status == 200
