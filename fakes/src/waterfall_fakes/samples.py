# ruff: noqa: E501  (recorded-style stream lines are kept whole, as they go on the wire)
"""Byte-exact streams in the shapes real providers send, for a router's real-world-shape tests.

Each :class:`StreamSample` is a whole response body, written by hand in the shape the provider
documents (the source is noted on each), with what it proves: whether it is complete (it ends
with the dialect's terminal event), the usage it carries, the error it ends with. Feed one whole,
byte by byte or in any chunking (:func:`waterfall_fakes.strategies.chunkings`) and check that a
relay or an observer gets the same answer every time.

>>> [s.name for s in STREAM_SAMPLES if s.api == "messages"]
['messages_text', 'messages_tool_use', 'messages_overloaded', 'messages_no_stop']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .dialects import Api

__all__ = ["STREAM_SAMPLES", "StreamSample", "stream_sample"]


@dataclass(frozen=True)
class StreamSample:
    """One recorded-style stream and what it says.

    ``raw`` is the body, byte for byte; ``events`` the number of events in it (``ping`` and
    error events included); ``complete`` whether it ends with the dialect's terminal event
    (``response.completed`` or ``response.incomplete``; ``message_stop``); ``usage`` the usage it
    reports in its own words (for Anthropic, ``message_start``'s updated by ``message_delta``'s:
    what :func:`waterfall_fakes.journal.usage_sent` reads), ``None`` when none; ``text`` the
    answer's text; ``error`` the error event's payload, if it ends with one.
    """

    name: str
    api: Api
    source: str
    raw: bytes
    events: int
    complete: bool
    usage: dict[str, Any] | None
    text: str
    error: dict[str, Any] | None = None


def _sse(*events: tuple[str, str], eol: str = "\n") -> bytes:
    return "".join(f"event: {name}{eol}data: {data}{eol}{eol}" for name, data in events).encode()


_RESP = (
    '"id":"resp_67c9fdcecf488190bdd9a0a5","object":"response","created_at":1741290958,'
    '"status":"{status}","background":false,"error":null,"incomplete_details":{details},'
    '"instructions":null,"max_output_tokens":{max_out},"model":"gpt-4.1-2025-04-14",'
    '"output":{output},"parallel_tool_calls":true,"previous_response_id":null,'
    '"reasoning":{{"effort":null,"summary":null}},"store":true,"temperature":1.0,'
    '"text":{{"format":{{"type":"text"}}}},"tool_choice":"auto","tools":[],"top_p":1.0,'
    '"truncation":"disabled","usage":{usage},"user":null,"metadata":{{}}'
)


def _response(
    status: str,
    output: str = "[]",
    usage: str = "null",
    details: str = "null",
    max_out: str = "null",
) -> str:
    return (
        "{"
        + _RESP.format(status=status, output=output, usage=usage, details=details, max_out=max_out)
        + "}"
    )


def _usage(prompt: int, completion: int) -> str:
    return (
        f'{{"input_tokens":{prompt},"input_tokens_details":{{"cached_tokens":0}},'
        f'"output_tokens":{completion},"output_tokens_details":{{"reasoning_tokens":0}},'
        f'"total_tokens":{prompt + completion}}}'
    )


_MSG = "msg_67c9fdcecf488190bdd9a0a5"
_TEXT_PARTS = ["Hi", " there", "! How", " can I", " help", " you", " today?"]


def _responses_text() -> bytes:
    item = (
        f'{{"id":"{_MSG}","type":"message","status":"in_progress","content":[],"role":"assistant"}}'
    )
    at = f'"item_id":"{_MSG}","output_index":0,"content_index":0'
    text = "".join(_TEXT_PARTS)
    part = f'{{"type":"output_text","annotations":[],"logprobs":[],"text":"{text}"}}'
    done_item = (
        f'{{"id":"{_MSG}","type":"message","status":"completed","content":[{part}],'
        '"role":"assistant"}'
    )
    seq = iter(range(100))
    events = [
        ("response.created", f'{{"type":"response.created","sequence_number":{next(seq)},"response":{_response("in_progress")}}}'),
        ("response.in_progress", f'{{"type":"response.in_progress","sequence_number":{next(seq)},"response":{_response("in_progress")}}}'),
        ("response.output_item.added", f'{{"type":"response.output_item.added","sequence_number":{next(seq)},"output_index":0,"item":{item}}}'),
        ("response.content_part.added", f'{{"type":"response.content_part.added","sequence_number":{next(seq)},{at},"part":{{"type":"output_text","annotations":[],"logprobs":[],"text":""}}}}'),
    ]  # fmt: skip
    for piece in _TEXT_PARTS:
        events.append(
            (
                "response.output_text.delta",
                f'{{"type":"response.output_text.delta","sequence_number":{next(seq)},{at},'
                f'"delta":"{piece}","logprobs":[],"obfuscation":"x9"}}',
            )
        )
    events += [
        ("response.output_text.done", f'{{"type":"response.output_text.done","sequence_number":{next(seq)},{at},"text":"{text}","logprobs":[]}}'),
        ("response.content_part.done", f'{{"type":"response.content_part.done","sequence_number":{next(seq)},{at},"part":{part}}}'),
        ("response.output_item.done", f'{{"type":"response.output_item.done","sequence_number":{next(seq)},"output_index":0,"item":{done_item}}}'),
        ("response.completed", f'{{"type":"response.completed","sequence_number":{next(seq)},"response":{_response("completed", f"[{done_item}]", _usage(37, 11))}}}'),
    ]  # fmt: skip
    return _sse(*events)


def _responses_function_call() -> bytes:
    fc = "fc_67ca09c6bedc8190a7abfec07b1a1332"
    call = "call_unLAR8MvFNptuiZK6K6HCy5k"
    args = '{\\"location\\":\\"Paris, France\\"}'
    parts = ['{\\"', "location", '\\":\\"', "Paris", ",", " France", '\\"}']
    item = (
        f'{{"id":"{fc}","type":"function_call","status":"{{s}}","arguments":"{{a}}",'
        f'"call_id":"{call}","name":"get_weather"}}'
    )
    seq = iter(range(100))
    at = f'"item_id":"{fc}","output_index":0'
    done_item = item.replace("{s}", "completed").replace("{a}", args)
    events = [
        ("response.created", f'{{"type":"response.created","sequence_number":{next(seq)},"response":{_response("in_progress")}}}'),
        ("response.in_progress", f'{{"type":"response.in_progress","sequence_number":{next(seq)},"response":{_response("in_progress")}}}'),
        ("response.output_item.added", f'{{"type":"response.output_item.added","sequence_number":{next(seq)},"output_index":0,"item":{item.replace("{s}", "in_progress").replace("{a}", "")}}}'),
    ]  # fmt: skip
    for piece in parts:
        events.append(
            (
                "response.function_call_arguments.delta",
                f'{{"type":"response.function_call_arguments.delta","sequence_number":'
                f'{next(seq)},{at},"delta":"{piece}"}}',
            )
        )
    events += [
        ("response.function_call_arguments.done", f'{{"type":"response.function_call_arguments.done","sequence_number":{next(seq)},{at},"arguments":"{args}"}}'),
        ("response.output_item.done", f'{{"type":"response.output_item.done","sequence_number":{next(seq)},"output_index":0,"item":{done_item}}}'),
        ("response.completed", f'{{"type":"response.completed","sequence_number":{next(seq)},"response":{_response("completed", f"[{done_item}]", _usage(291, 23))}}}'),
    ]  # fmt: skip
    return _sse(*events)


def _responses_incomplete() -> bytes:
    at = f'"item_id":"{_MSG}","output_index":0,"content_index":0'
    part = '{"type":"output_text","annotations":[],"logprobs":[],"text":"Hi there"}'
    item = (
        f'{{"id":"{_MSG}","type":"message","status":"incomplete","content":[{part}],'
        '"role":"assistant"}'
    )
    final = _response(
        "incomplete", f"[{item}]", _usage(37, 2), '{"reason":"max_output_tokens"}', "2"
    )
    events = [
        ("response.created", f'{{"type":"response.created","sequence_number":0,"response":{_response("in_progress", max_out="2")}}}'),
        ("response.output_item.added", f'{{"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":{{"id":"{_MSG}","type":"message","status":"in_progress","content":[],"role":"assistant"}}}}'),
        ("response.content_part.added", f'{{"type":"response.content_part.added","sequence_number":2,{at},"part":{{"type":"output_text","annotations":[],"logprobs":[],"text":""}}}}'),
        ("response.output_text.delta", f'{{"type":"response.output_text.delta","sequence_number":3,{at},"delta":"Hi","logprobs":[]}}'),
        ("response.output_text.delta", f'{{"type":"response.output_text.delta","sequence_number":4,{at},"delta":" there","logprobs":[]}}'),
        ("response.output_text.done", f'{{"type":"response.output_text.done","sequence_number":5,{at},"text":"Hi there","logprobs":[]}}'),
        ("response.content_part.done", f'{{"type":"response.content_part.done","sequence_number":6,{at},"part":{part}}}'),
        ("response.output_item.done", f'{{"type":"response.output_item.done","sequence_number":7,"output_index":0,"item":{item}}}'),
        ("response.incomplete", f'{{"type":"response.incomplete","sequence_number":8,"response":{final}}}'),
    ]  # fmt: skip
    return _sse(*events)


def _responses_failed() -> bytes:
    at = f'"item_id":"{_MSG}","output_index":0,"content_index":0'
    failed = _response("failed").replace(
        '"error":null',
        '"error":{"code":"server_error","message":"The model failed to generate a response."}',
    )
    events = [
        ("response.created", f'{{"type":"response.created","sequence_number":0,"response":{_response("in_progress")}}}'),
        ("response.output_item.added", f'{{"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":{{"id":"{_MSG}","type":"message","status":"in_progress","content":[],"role":"assistant"}}}}'),
        ("response.content_part.added", f'{{"type":"response.content_part.added","sequence_number":2,{at},"part":{{"type":"output_text","annotations":[],"logprobs":[],"text":""}}}}'),
        ("response.output_text.delta", f'{{"type":"response.output_text.delta","sequence_number":3,{at},"delta":"Hi","logprobs":[]}}'),
        ("response.failed", f'{{"type":"response.failed","sequence_number":4,"response":{failed}}}'),
    ]  # fmt: skip
    return _sse(*events)


def _responses_error_event() -> bytes:
    at = f'"item_id":"{_MSG}","output_index":0,"content_index":0'
    events = [
        ("response.created", f'{{"type":"response.created","sequence_number":0,"response":{_response("in_progress")}}}'),
        ("response.output_item.added", f'{{"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":{{"id":"{_MSG}","type":"message","status":"in_progress","content":[],"role":"assistant"}}}}'),
        ("response.output_text.delta", f'{{"type":"response.output_text.delta","sequence_number":2,{at},"delta":"Caf\u00e9 \u65e5\u672c","logprobs":[]}}'),
        ("error", '{"type":"error","code":"rate_limit_exceeded","message":"Rate limit reached for requests","param":null,"sequence_number":3}'),
    ]  # fmt: skip
    return _sse(*events)


_AMSG = "msg_01XFDUDYJgAACzvnptvVoYEL"
_START = (
    '{"type":"message_start","message":{"id":"' + _AMSG + '","type":"message",'
    '"role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,'
    '"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,'
    '"cache_read_input_tokens":0,"output_tokens":1,"service_tier":"standard"}}}'
)
_START_USAGE = {
    "input_tokens": 25,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
    "output_tokens": 1,
    "service_tier": "standard",
}


def _text_delta(text: str, index: int = 0) -> tuple[str, str]:
    return (
        "content_block_delta",
        f'{{"type":"content_block_delta","index":{index},'
        f'"delta":{{"type":"text_delta","text":"{text}"}}}}',
    )


def _messages_text() -> bytes:
    return _sse(
        ("message_start", _START),
        ("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}'),
        ("ping", '{"type": "ping"}'),
        _text_delta("Hello"),
        _text_delta("! Caf\u00e9 \u2615"),
        _text_delta(" \U0001f680"),
        ("content_block_stop", '{"type":"content_block_stop","index":0}'),
        ("message_delta", '{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}'),
        ("message_stop", '{"type":"message_stop"}'),
    )  # fmt: skip


def _messages_tool_use() -> bytes:
    def json_delta(fragment: str) -> tuple[str, str]:
        return (
            "content_block_delta",
            '{"type":"content_block_delta","index":1,'
            f'"delta":{{"type":"input_json_delta","partial_json":"{fragment}"}}}}',
        )

    return _sse(
        ("message_start", _START.replace('"input_tokens":25', '"input_tokens":472')),
        ("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}'),
        ("ping", '{"type": "ping"}'),
        _text_delta("Okay, let me check the weather"),
        ("content_block_stop", '{"type":"content_block_stop","index":0}'),
        ("content_block_start", '{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}'),
        json_delta(""),
        json_delta('{\\"location\\":'),
        json_delta(' \\"San Francisco,'),
        json_delta(' CA\\"}'),
        ("content_block_stop", '{"type":"content_block_stop","index":1}'),
        ("message_delta", '{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}'),
        ("message_stop", '{"type":"message_stop"}'),
    )  # fmt: skip


def _messages_overloaded() -> bytes:
    return _sse(
        ("message_start", _START),
        ("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}'),
        ("ping", '{"type": "ping"}'),
        _text_delta("Hello"),
        ("error", '{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'),
    )  # fmt: skip


def _messages_no_stop() -> bytes:
    events = [
        ("message_start", _START),
        ("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}'),
        ("ping", '{"type": "ping"}'),
        _text_delta("Hello"),
        ("content_block_stop", '{"type":"content_block_stop","index":0}'),
        ("message_delta", '{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":2}}'),
    ]  # fmt: skip
    return _sse(*events, eol="\r\n")


def _responses_usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


_DOCS_RESPONSES = "OpenAI API reference, Responses streaming events; openai-python types/responses"
_DOCS_MESSAGES = "Anthropic API docs, Streaming Messages (event types, ping, error events)"

STREAM_SAMPLES: tuple[StreamSample, ...] = (
    StreamSample(
        "responses_text", "responses", _DOCS_RESPONSES + " (text answer; obfuscation field)",
        _responses_text(), 15, True, _responses_usage(37, 11), "".join(_TEXT_PARTS),
    ),
    StreamSample(
        "responses_function_call", "responses", _DOCS_RESPONSES + " (function calling)",
        _responses_function_call(), 13, True, _responses_usage(291, 23), "",
    ),
    StreamSample(
        "responses_incomplete", "responses", _DOCS_RESPONSES + " (max_output_tokens reached)",
        _responses_incomplete(), 9, True, _responses_usage(37, 2), "Hi there",
    ),
    StreamSample(
        "responses_failed", "responses", _DOCS_RESPONSES + " (response.failed)",
        _responses_failed(), 5, False, None, "Hi",
        {"code": "server_error", "message": "The model failed to generate a response."},
    ),
    StreamSample(
        "responses_error_event", "responses", _DOCS_RESPONSES + " (error event mid-stream)",
        _responses_error_event(), 4, False, None, "Caf\u00e9 \u65e5\u672c",
        {"type": "error", "code": "rate_limit_exceeded",
         "message": "Rate limit reached for requests", "param": None, "sequence_number": 3},
    ),
    StreamSample(
        "messages_text", "messages", _DOCS_MESSAGES + " (basic streaming request)",
        _messages_text(), 9, True, {**_START_USAGE, "output_tokens": 15},
        "Hello! Caf\u00e9 \u2615 \U0001f680",
    ),
    StreamSample(
        "messages_tool_use", "messages", _DOCS_MESSAGES + " (streaming request with tool use)",
        _messages_tool_use(), 13, True,
        {**_START_USAGE, "input_tokens": 472, "output_tokens": 89},
        "Okay, let me check the weather",
    ),
    StreamSample(
        "messages_overloaded", "messages", _DOCS_MESSAGES + " (error event: overloaded_error)",
        _messages_overloaded(), 5, False, dict(_START_USAGE), "Hello",
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    ),
    StreamSample(
        "messages_no_stop", "messages", _DOCS_MESSAGES + " (cut before message_stop; CRLF)",
        _messages_no_stop(), 6, False, {**_START_USAGE, "output_tokens": 2}, "Hello",
    ),
)  # fmt: skip
"""Every sample, Responses API first."""


def stream_sample(name: str) -> StreamSample:
    """The sample called ``name`` (``KeyError`` if there is none)."""
    for s in STREAM_SAMPLES:
        if s.name == name:
            return s
    raise KeyError(name)
