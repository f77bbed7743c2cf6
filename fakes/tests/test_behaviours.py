"""Every behaviour, alone and composed, checked byte for byte on the replies a fake gives."""

from __future__ import annotations

import json
import typing
from typing import Any

import httpx
import pytest

from waterfall_fakes import (
    BEHAVIOUR_HEADER,
    Behaviour,
    BehaviourError,
    BigEvent,
    Chunking,
    ContentFilter,
    ContextLengthExceeded,
    Cut,
    DoubleDone,
    ErrorEvent,
    FakeProvider,
    FakeTransport,
    Fields,
    Hang,
    InsufficientBalance,
    KeepAlive,
    LineEndings,
    MalformedEvent,
    NoDone,
    NoUsage,
    Ok,
    Prefill,
    RateLimit,
    Reply,
    SlowChunks,
    SlowFirstByte,
    Stall,
    Status,
    ToolCall,
    Truncate,
    When,
    chunk_bytes,
    format_behaviours,
    parse_behaviours,
)

CHAT = "/v1/chat/completions"
BODY = {
    "model": "fake-small",
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 3,
}
STREAM = {**BODY, "stream": True}
ALL_KINDS = [
    cls.model_fields["kind"].default for cls in typing.get_args(typing.get_args(Behaviour)[0])
]


def answer(spec: str | None, body: dict[str, Any] | None = None, **config: Any) -> Reply:
    """The reply to the first request of a fresh fake, with ``spec`` as the behaviour header."""
    headers = {BEHAVIOUR_HEADER: spec} if spec is not None else {}
    return FakeProvider(**config).handle("POST", CHAT, headers, json.dumps(body or STREAM).encode())


def plain(body: dict[str, Any] | None = None, **config: Any) -> bytes:
    """The body of the same request without behaviours."""
    return answer(None, body, **config).body


def events(body: bytes, sep: bytes = b"\n") -> list[bytes]:
    blocks = body.split(sep + sep)
    assert blocks[-1] == b""
    return blocks[:-1]


def data_of(body: bytes) -> list[str]:
    out = []
    for block in events(body):
        out += [ln[6:] for ln in block.decode().split("\n") if ln.startswith("data: ")]
    return out


# -- the text form ---------------------------------------------------------------------------------


def test_every_kind_is_covered_here() -> None:
    assert sorted(ALL_KINDS) == sorted(
        [
            "ok",
            "rate_limit",
            "insufficient_balance",
            "status",
            "hang",
            "slow_first_byte",
            "truncate",
            "cut",
            "stall",
            "context_length_exceeded",
            "content_filter",
            "tool_call",
            "prefill",
            "when",
            "no_done",
            "double_done",
            "error_event",
            "malformed_event",
            "big_event",
            "no_usage",
            "slow_chunks",
            "keepalive",
            "fields",
            "line_endings",
            "chunking",
        ]
    )


EXAMPLES: list[tuple[str, Any]] = [
    ("ok", Ok()),
    (
        "rate_limit:dialect=retry-after-date,seconds=2.5",
        RateLimit(dialect="retry-after-date", seconds=2.5),
    ),
    ("insufficient_balance", InsufficientBalance()),
    ("status:code=503,message=busy now", Status(code=503, message="busy now")),
    ("hang:seconds=0.25", Hang(seconds=0.25)),
    ("slow_first_byte:seconds=1.5", SlowFirstByte(seconds=1.5)),
    ("truncate:events=4", Truncate(events=4)),
    ("cut:bytes=17", Cut(bytes=17)),
    ("cut:bytes=3,tokens=2", Cut(bytes=3, tokens=2)),
    ("stall:events=3,seconds=0.5", Stall(events=3, seconds=0.5)),
    ("stall", Stall()),
    ("context_length_exceeded", ContextLengthExceeded()),
    ("context_length_exceeded:message=too long", ContextLengthExceeded(message="too long")),
    ("context_length_exceeded:style=anthropic", ContextLengthExceeded(style="anthropic")),
    ("content_filter", ContentFilter()),
    ("content_filter:code=content_filter,after=2", ContentFilter(code="content_filter", after=2)),
    ("prefill:mode=reject", Prefill(mode="reject")),
    ("tool_call", ToolCall()),
    (
        'tool_call:name=get,arguments={"city":"Oslo"}',
        ToolCall(name="get", arguments='{"city":"Oslo"}'),
    ),
    ("rate_limit:dialect=anthropic", RateLimit(dialect="anthropic")),
    (
        "error_event:code=overloaded_error,failed=true",
        ErrorEvent(code="overloaded_error", failed=True),
    ),
    ("prefill", Prefill()),
    ("when:p=0.25,times=2,skip=1", When(p=0.25, times=2, skip=1)),
    ("when:start=10.0,end=70.5,since=first", When(start=10, end=70.5, since="first")),
    ("no_done", NoDone()),
    ("double_done", DoubleDone()),
    (
        "error_event:after=2,message=boom,code=overloaded,done=true",
        ErrorEvent(after=2, message="boom", code="overloaded", done=True),
    ),
    ("malformed_event:after=3", MalformedEvent(after=3)),
    ("big_event:size=100000,after=2", BigEvent(size=100_000, after=2)),
    ("no_usage", NoUsage()),
    ("slow_chunks:seconds=0.01", SlowChunks(seconds=0.01)),
    ("keepalive:every=3,text=ping", KeepAlive(every=3, text="ping")),
    ("fields:event=delta,ids=false", Fields(event="delta", ids=False)),
    ("line_endings:style=cr", LineEndings(style="cr")),
    ("chunking:at=1|5|9", Chunking(at=(1, 5, 9))),
    ("chunking:seed=4,max_size=3", Chunking(seed=4, max_size=3)),
    ("chunking:size=2", Chunking(size=2)),
]


@pytest.mark.parametrize(("text", "behaviour"), EXAMPLES)
def test_text_form_round_trips(text: str, behaviour: Any) -> None:
    assert parse_behaviours(text) == [behaviour]
    assert format_behaviours([behaviour]) == text
    assert parse_behaviours(behaviour.model_dump()) == [behaviour]


def test_every_kind_has_an_example() -> None:
    assert {b.kind for _, b in EXAMPLES} == set(ALL_KINDS)


def test_parse_forms() -> None:
    assert parse_behaviours(None) == []
    assert parse_behaviours("") == []
    assert parse_behaviours(" no_done ;; cut : bytes = 3 , ; ") == [NoDone(), Cut(bytes=3)]
    assert parse_behaviours(Hang()) == [Hang()]
    assert parse_behaviours({"kind": "truncate", "events": 2}) == [Truncate(events=2)]
    assert parse_behaviours(["no_done; double_done", Ok(), {"kind": "no_usage"}]) == [
        NoDone(),
        DoubleDone(),
        Ok(),
        NoUsage(),
    ]
    assert parse_behaviours((Ok(), "cut")) == [Ok(), Cut()]
    assert format_behaviours([NoDone(), Cut(bytes=3)]) == "no_done; cut:bytes=3"
    assert format_behaviours([]) == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope", "'nope': kind: "),
        ("cut:bytes", "'cut:bytes': expected key=value, got 'bytes'"),
        ("cut:=3", "'cut:=3': expected key=value, got '=3'"),
        ("cut:bites=3", "'cut:bites=3': cut.bites: Extra inputs are not permitted"),
        ("cut:bytes=-1", "'cut:bytes=-1': cut.bytes: Input should be greater than or equal to 0"),
        (
            "status:code=200",
            "'status:code=200': status.code: Input should be greater than or equal to 400",
        ),
        (
            "rate_limit:dialect=smoke",
            "'rate_limit:dialect=smoke': rate_limit.dialect: Input should be",
        ),
        ("chunking:at=1|x", "'chunking:at=1|x': chunking.at.1: Input should be a valid integer"),
    ],
)
def test_parse_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(BehaviourError) as info:
        parse_behaviours(text)
    assert str(info.value).startswith(message)


def test_dict_errors() -> None:
    with pytest.raises(BehaviourError, match="bogus"):
        parse_behaviours({"kind": "cut", "bogus": 1})
    assert issubclass(BehaviourError, ValueError)


def test_behaviours_are_frozen() -> None:
    with pytest.raises(ValueError, match="frozen"):
        setattr(Cut(), "bytes", 3)  # noqa: B010


# -- chunking --------------------------------------------------------------------------------------


def test_chunk_bytes() -> None:
    data = b"0123456789"
    assert chunk_bytes(b"", Chunking(size=1)) == []
    assert chunk_bytes(data, None) == [data]
    assert chunk_bytes(data, None, [3, 7]) == [b"012", b"3456", b"789"]
    assert chunk_bytes(data, Chunking(size=4), [3]) == [b"0123", b"4567", b"89"]
    assert chunk_bytes(data, Chunking(size=10)) == [data]
    assert chunk_bytes(data, Chunking(at=(8, 0, 2, 2, 99, -1))) == [b"01", b"234567", b"89"]
    by_seed = chunk_bytes(data * 10, Chunking(seed=5, max_size=4))
    assert by_seed == chunk_bytes(data * 10, Chunking(seed=5, max_size=4))
    assert by_seed != chunk_bytes(data * 10, Chunking(seed=6, max_size=4))
    assert b"".join(by_seed) == data * 10
    assert {len(c) for c in by_seed} <= {1, 2, 3, 4}
    assert len(by_seed) > 100 // 4


def test_natural_chunks_are_one_per_event() -> None:
    reply = answer(None)
    assert list(reply.chunks) == [block + b"\n\n" for block in events(reply.body)]
    assert reply.delays == (0.0,) * len(reply.chunks)
    assert reply.cut is False
    assert reply.headers_delay == 0.0


def test_chunking_splits_inside_multibyte_characters() -> None:
    reply = answer("chunking:size=1")
    assert reply.body == plain()
    assert all(len(c) == 1 for c in reply.chunks)
    reply.body.decode()
    undecodable = 0
    for chunk in reply.chunks:
        try:
            chunk.decode()
        except UnicodeDecodeError:
            undecodable += 1
    assert undecodable > 0


def test_chunking_at_offsets_inside_a_character_and_inside_data() -> None:
    body = plain()
    first = next(i for i, byte in enumerate(body) if byte >= 0x80)
    reply = answer(f"chunking:at=3|{first + 1}")
    assert reply.chunks == (body[:3], body[3 : first + 1], body[first + 1 :])
    assert reply.chunks[0] == b"dat"
    with pytest.raises(UnicodeDecodeError):
        reply.chunks[1].decode()
    with pytest.raises(UnicodeDecodeError):
        reply.chunks[2].decode()
    assert b"".join(reply.chunks).decode() == body.decode()


def test_chunking_applies_to_json_answers_too() -> None:
    reply = answer("chunking:size=10", BODY)
    assert reply.body == plain(BODY)
    assert [len(c) for c in reply.chunks[:-1]] == [10] * (len(reply.chunks) - 1)
    assert 1 <= len(reply.chunks[-1]) <= 10


def test_chunking_by_seed_is_reproducible() -> None:
    one, two = answer("chunking:seed=1,max_size=5"), answer("chunking:seed=1,max_size=5")
    assert one.chunks == two.chunks
    assert one.body == plain()
    assert max(len(c) for c in one.chunks) <= 5


# -- answers that replace the normal one -----------------------------------------------------------


def test_ok_is_a_normal_answer() -> None:
    assert answer("ok").body == plain()


def test_status() -> None:
    reply = answer("status:code=503; truncate")
    assert reply.status == 503
    assert json.loads(reply.body) == {
        "error": {
            "message": "The engine is currently overloaded.",
            "type": "server_error",
            "param": None,
            "code": "overloaded",
        }
    }
    assert dict(reply.headers)["content-type"] == "application/json"
    teapot = answer("status:code=418,message=I am a teapot")
    assert teapot.status == 418
    assert json.loads(teapot.body)["error"] == {
        "message": "I am a teapot",
        "type": "server_error",
        "param": None,
        "code": "http_418",
    }
    assert answer("status", BODY).status == 500
    assert answer("status:code=401").body == (
        b'{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error",'
        b'"param":null,"code":"invalid_api_key"}}'
    )


def test_first_replacing_behaviour_wins() -> None:
    assert answer("status:code=502; rate_limit; insufficient_balance").status == 502
    assert answer("insufficient_balance; status:code=502").status == 402
    assert answer("rate_limit; status:code=502").status == 429


def test_insufficient_balance() -> None:
    reply = answer("insufficient_balance", BODY)
    assert reply.status == 402
    assert json.loads(reply.body) == {
        "error": {
            "message": "Insufficient balance. Please top up your account.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_balance",
            "details": {"required_msats": 1000, "available_msats": 0},
        }
    }


def test_replacing_answers_ignore_stream_faults_but_not_byte_faults() -> None:
    reply = answer(
        "rate_limit:seconds=2; truncate:events=0; no_done; chunking:size=7; cut:bytes=30"
    )
    assert reply.status == 429
    full = answer("rate_limit:seconds=2").body
    assert reply.body == full[:30]
    assert [len(c) for c in reply.chunks] == [7, 7, 7, 7, 2]
    assert reply.cut is True


# -- timing ----------------------------------------------------------------------------------------


def test_hang() -> None:
    forever = answer("hang")
    assert forever.headers_delay is None
    assert forever.body == plain()
    assert answer("hang:seconds=0.25").headers_delay == 0.25
    assert answer("hang:seconds=0").headers_delay == 0.0
    assert answer("hang:seconds=inf").headers_delay is None


def test_slow_first_byte_and_slow_chunks() -> None:
    first = answer("slow_first_byte:seconds=0.3")
    assert first.headers_delay == 0.0
    assert first.delays == (0.3,) + (0.0,) * (len(first.chunks) - 1)
    slow = answer("slow_chunks:seconds=0.02")
    assert slow.delays == (0.0,) + (0.02,) * (len(slow.chunks) - 1)
    both = answer("slow_chunks:seconds=0.02; slow_first_byte:seconds=0.3; chunking:size=100")
    assert both.delays == (0.3,) + (0.02,) * (len(both.chunks) - 1)
    assert both.delay_before(len(both.chunks)) == 0.0
    assert both.body == plain()
    json_reply = answer("slow_first_byte:seconds=0.3", BODY)
    assert json_reply.delays == (0.3,)


# -- stream faults ---------------------------------------------------------------------------------


def test_truncate() -> None:
    full = events(plain())
    assert len(full) == 1 + 3 + 1 + 1  # role, 3 words, finish, [DONE]
    reply = answer("truncate:events=2")
    assert reply.body == b"".join(e + b"\n\n" for e in full[:2])
    assert reply.cut is False
    assert answer("truncate:events=0").body == b""
    assert answer("truncate:events=0").chunks == ()
    assert answer("truncate:events=99").body == b"".join(e + b"\n\n" for e in full[:-1])


def test_truncate_then_chunking() -> None:
    reply = answer("truncate:events=2; chunking:size=3")
    expected = answer("truncate:events=2").body
    assert reply.body == expected
    assert [len(c) for c in reply.chunks] == [3] * (len(expected) // 3) + (
        [len(expected) % 3] if len(expected) % 3 else []
    )
    assert data_of(reply.body)[-1] != "[DONE]"


def test_cut() -> None:
    full = plain()
    reply = answer("cut:bytes=50")
    assert reply.cut is True
    assert reply.body == full[:50]
    assert reply.chunks == (full[:50],)
    nothing = answer("cut")
    assert nothing.chunks == ()
    assert nothing.cut is True
    json_cut = answer("cut:bytes=10", BODY)
    assert json_cut.body == plain(BODY)[:10]
    assert dict(json_cut.headers)["content-length"] == str(len(plain(BODY)))


def test_cut_inside_natural_chunks_keeps_the_boundaries() -> None:
    full = plain()
    first_event = len(events(full)[0]) + 2
    reply = answer(f"cut:bytes={first_event + 5}")
    assert reply.chunks == (full[:first_event], full[first_event : first_event + 5])


def test_cut_with_crlf_line_endings() -> None:
    crlf = answer("line_endings:style=crlf").body
    reply = answer("line_endings:style=crlf; cut:bytes=400")
    assert reply.body == crlf[:400]
    assert b"\r\n\r\n" in reply.body
    assert b"\n\n" not in reply.body


def test_no_done_and_double_done() -> None:
    full = plain()
    assert full.endswith(b"\n\ndata: [DONE]\n\n")
    assert answer("no_done").body == full[: -len(b"data: [DONE]\n\n")]
    assert answer("double_done").body == full + b"data: [DONE]\n\n"
    assert data_of(answer("no_done; double_done").body).count("[DONE]") == 2
    assert data_of(answer("double_done; no_done").body).count("[DONE]") == 0


def test_error_event() -> None:
    reply = answer("error_event:after=2")
    data = data_of(reply.body)
    assert data[:2] == data_of(plain())[:2]
    assert len(data) == 3
    assert json.loads(data[2]) == {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": "server_error",
        }
    }
    assert reply.cut is False
    at_start = data_of(answer("error_event:after=0,code=overloaded,message=busy").body)
    assert [json.loads(d) for d in at_start] == [
        {"error": {"message": "busy", "type": "server_error", "param": None, "code": "overloaded"}}
    ]


def test_error_event_with_done_and_fields() -> None:
    reply = answer("error_event:after=1,done=true; fields")
    blocks = events(reply.body)
    assert len(blocks) == 3
    assert blocks[1].startswith(b'id: 2\nevent: completion\ndata: {"error":')
    assert blocks[2] == b"id: 3\nevent: completion\ndata: [DONE]"


def test_malformed_event() -> None:
    normal = data_of(plain())
    data = data_of(answer("malformed_event:after=2").body)
    assert len(data) == len(normal) + 1
    assert data[:2] == normal[:2]
    assert data[3:] == normal[2:]
    with pytest.raises(json.JSONDecodeError):
        json.loads(data[2])
    assert data_of(answer("malformed_event:after=99").body)[-2:] == [data[2], "[DONE]"]


def test_big_event() -> None:
    normal = data_of(plain())
    reply = answer("big_event:after=1")
    data = data_of(reply.body)
    assert len(data) == len(normal)
    assert len(data[1].encode()) >= 70_000 > 64 * 1024
    big = json.loads(data[1])
    padding = big.pop("x_padding")
    assert set(padding) == {"·"}
    assert big == json.loads(normal[1])
    assert data[0] == normal[0]
    assert data[2:] == normal[2:]
    assert len(reply.chunks) == len(normal)  # still one natural chunk per event


@pytest.mark.parametrize("size", [1, 300, 1000, 1001, 65_537, 100_000])
def test_big_event_size_is_a_lower_bound(size: int) -> None:
    data = data_of(answer(f"big_event:after=2,size={size}").body)
    assert size <= len(data[2].encode()) <= max(size + 1, len(data_of(plain())[2]) + 16)
    json.loads(data[2])


def test_big_event_skips_events_that_are_not_json_objects() -> None:
    data = data_of(answer("malformed_event:after=1; big_event:after=1,size=5000").body)
    with pytest.raises(json.JSONDecodeError):
        json.loads(data[1])
    assert len(data[2].encode()) >= 5000
    assert json.loads(data[2])["choices"][0]["delta"]["content"]
    last = data_of(answer("truncate:events=1; malformed_event; big_event:after=5,size=900").body)
    assert len(last[0].encode()) >= 900
    assert json.loads(last[0])["choices"][0]["delta"]["role"] == "assistant"
    nothing_to_pad = answer("truncate:events=0; malformed_event; big_event")
    assert data_of(nothing_to_pad.body) == ['{"choices": [{"delta": {"content": "oops']


def test_no_usage() -> None:
    with_usage = {**STREAM, "stream_options": {"include_usage": True}}
    data = data_of(answer("no_usage", with_usage).body)
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["usage"] is None for c in chunks)
    assert all(c["choices"] for c in chunks)
    assert len(chunks) == len(data_of(plain(with_usage))) - 2
    assert "usage" not in json.loads(answer("no_usage", BODY).body)
    embedding = FakeProvider().handle(
        "POST",
        "/v1/embeddings",
        {BEHAVIOUR_HEADER: "no_usage"},
        b'{"model": "fake-small", "input": "x"}',
    )
    assert "usage" not in json.loads(embedding.body)


def test_keepalive() -> None:
    normal = events(plain())
    reply = answer("keepalive")
    expected = []
    for block in normal:
        expected += [b": keep-alive", block]
    assert events(reply.body) == expected
    every_two = events(answer("keepalive:every=2,text=ping").body)
    assert every_two[0] == b": ping"
    assert every_two[1:3] == normal[:2]
    assert every_two[3] == b": ping"
    assert every_two.count(b": ping") == (len(normal) + 1) // 2


def test_fields() -> None:
    normal = events(plain())
    blocks = events(answer("fields").body)
    assert blocks == [
        f"id: {i + 1}\nevent: completion\n".encode() + block for i, block in enumerate(normal)
    ]
    no_ids = events(answer("fields:event=delta,ids=false").body)
    assert no_ids == [b"event: delta\n" + block for block in normal]


def test_keepalive_with_fields() -> None:
    blocks = events(answer("keepalive:every=2; fields").body)
    assert blocks[0] == b": keep-alive"
    assert blocks[1].startswith(b"id: 1\nevent: completion\ndata: {")
    assert blocks[2].startswith(b"id: 2\nevent: completion\ndata: {")
    assert blocks[3] == b": keep-alive"
    assert blocks[-1] == b"id: 6\nevent: completion\ndata: [DONE]"


@pytest.mark.parametrize(("style", "sep"), [("lf", b"\n"), ("crlf", b"\r\n"), ("cr", b"\r")])
def test_line_endings(style: str, sep: bytes) -> None:
    normal = plain()
    reply = answer(f"line_endings:style={style}")
    assert reply.body == normal.replace(b"\n", sep)
    assert len(reply.chunks) == len(events(normal))
    assert answer("line_endings").body == normal.replace(b"\n", b"\r\n")


def test_line_endings_with_keepalive_and_fields() -> None:
    body = answer("line_endings:style=cr; keepalive; fields").body
    assert body.startswith(b": keep-alive\r\rid: 1\revent: completion\rdata: {")
    assert b"\n" not in body


def test_every_behaviour_leaves_the_request_recorded() -> None:
    fake = FakeProvider()
    for text, _ in EXAMPLES:
        fake.handle("POST", CHAT, {BEHAVIOUR_HEADER: text}, json.dumps(STREAM).encode())
    # a gate is not recorded, and these two let nothing through (skip=1; a window from 10 s)
    expected = [() if isinstance(b, When) else (b,) for _, b in EXAMPLES]
    assert [r.behaviours for r in fake.requests] == expected


def test_over_httpx_header_alias() -> None:
    fake = FakeProvider()
    with httpx.Client(transport=FakeTransport(fake), base_url="http://fake") as c:
        r = c.post(CHAT, json=BODY, headers={"X-Fake-Behavior": "status:code=504"})
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "gateway_timeout"


def test_big_event_on_a_stream_truncated_to_nothing_is_a_no_op() -> None:
    """Regression: ``truncate:events=0; big_event`` raised IndexError (found by the ci profile)."""
    body = json.dumps(
        {"model": "fake-small", "messages": [{"role": "user", "content": "x"}], "stream": True}
    ).encode()
    fake = FakeProvider(script=["truncate:events=0; big_event:size=1,after=0"])
    reply = fake.handle("POST", "/v1/chat/completions", {}, body)
    assert (reply.status, reply.body) == (200, b"")
