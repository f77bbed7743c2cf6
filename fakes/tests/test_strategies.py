"""The Hypothesis strategies produce what they promise, shrink to the plainest case and reject
bad arguments. SSE encodings are checked with a small reference reader written from the WHATWG
"interpret an event stream" algorithm."""

from __future__ import annotations

import codecs
import json
import os
import re
from typing import Any, NamedTuple

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from waterfall_fakes import (
    Chunking,
    Cut,
    FakeProvider,
    Hang,
    SlowChunks,
    SlowFirstByte,
    format_behaviours,
    parse_behaviours,
)
from waterfall_fakes.strategies import (
    BEHAVIOUR_KINDS,
    FINISH_REASONS,
    SSEEvent,
    behaviours,
    chat_completion_chunks,
    chat_completion_streams,
    chunkings,
    fault_scripts,
    register_profiles,
    sse_encodings,
    sse_events,
)

# -- a reference SSE reader (test-only) --------------------------------------------------------


class Event(NamedTuple):
    type: str
    data: str
    last_event_id: str


class ReferenceReader:
    """WHATWG's event-stream interpretation, fed bytes in any chunking."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._pending = ""
        self._started = False
        self._data: list[str] = []
        self._type = ""
        self._id = ""
        self.last_event_id = ""
        self.retry: int | None = None
        self.events: list[Event] = []

    def feed(self, chunk: bytes, final: bool = False) -> None:
        text = self._decoder.decode(chunk, final)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        self._pending += text
        while match := re.search(r"\r\n|\r|\n", self._pending):
            if match.group() == "\r" and match.end() == len(self._pending) and not final:
                break  # maybe the first half of a CRLF
            line, self._pending = self._pending[: match.start()], self._pending[match.end() :]
            self._line(line)

    def close(self) -> None:
        self.feed(b"", final=True)  # an unterminated last line is dropped

    def _line(self, line: str) -> None:
        if not line:
            self._dispatch()
            return
        if line.startswith(":"):
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)

    def _dispatch(self) -> None:
        self.last_event_id = self._id
        if self._data:
            self.events.append(Event(self._type or "message", "\n".join(self._data), self._id))
        self._data, self._type = [], ""


def read(chunks: list[bytes]) -> ReferenceReader:
    reader = ReferenceReader()
    for chunk in chunks:
        reader.feed(chunk)
    reader.close()
    return reader


def test_reference_reader_follows_the_spec() -> None:
    wire = (
        b"\xef\xbb\xbf: hello\r\n"
        b"data:first\r\ndata:  second\r\nid: 7\r\n\r\n"
        b"event: ping\rretry: 15\rretry: x\rdata\r\r"
        b"id: a\x00b\ndata: \n\n"
        b"event: lost\n\n"
        b"data: unterminated\n"
    )
    for chunks in ([wire], [bytes([b]) for b in wire]):
        reader = read(chunks)
        assert reader.events == [
            Event("message", "first\n second", "7"),
            Event("ping", "", "7"),
            Event("message", "", "7"),
        ]
        assert reader.retry == 15
        assert reader.last_event_id == "7"


# -- chat-completion streams -------------------------------------------------------------------


def check_stream(chunks: list[dict[str, Any]], min_size: int = 0, max_size: int | None = None):
    """Assert everything chat_completion_streams promises; return {index: (reason, deltas)}."""
    assert json.loads(json.dumps(chunks, ensure_ascii=False)) == chunks
    first = chunks[0]
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["id"].startswith("chatcmpl-")
        assert (chunk["id"], chunk["created"], chunk["model"]) == (
            first["id"],
            first["created"],
            first["model"],
        )
    with_usage = "usage" in first
    if with_usage:
        *chunks, last = chunks
        usage = last["usage"]
        assert last["choices"] == []
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert all(c["usage"] is None for c in chunks)
    else:
        assert all("usage" not in c for c in chunks)
    per_choice: dict[int, list[dict[str, Any]]] = {}
    for chunk in chunks:
        (choice,) = chunk["choices"]
        per_choice.setdefault(choice["index"], []).append(choice)
    assert sorted(per_choice) == list(range(len(per_choice)))
    out = {}
    for index, seq in per_choice.items():
        head, *middle, tail = seq
        assert head["delta"]["role"] == "assistant"
        assert tail["delta"] == {}
        reason = tail["finish_reason"]
        assert reason in FINISH_REASONS
        assert all(c["finish_reason"] is None for c in [head, *middle])
        assert all("role" not in c["delta"] for c in middle)
        if reason == "tool_calls":
            (call,) = head["delta"]["tool_calls"]
            assert call["id"].startswith("call_")
            fragments = [c["delta"]["tool_calls"][0]["function"]["arguments"] for c in middle]
            arguments = json.loads("".join(fragments))
            assert set(arguments) == {"input"}
            deltas = middle[1:-1]
        else:
            assert head["delta"]["content"] == ""
            assert all(set(c["delta"]) == {"content"} for c in middle)
            deltas = middle
        assert min_size <= len(deltas) <= (max_size if max_size is not None else len(deltas))
        out[index] = (reason, deltas)
    return out


@given(chat_completion_streams())
def test_streams_are_valid(chunks: list[dict[str, Any]]) -> None:
    assert 1 <= len(check_stream(chunks)) <= 3


@given(st.data(), st.integers(0, 4), st.integers(0, 4))
def test_streams_respect_sizes(data: st.DataObject, a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    chunks = data.draw(chat_completion_streams(min_size=lo, max_size=hi))
    check_stream(chunks, lo, hi)


@given(
    chat_completion_streams(
        st.just("日本🚀"),
        min_size=3,
        max_size=3,
        choices=st.just(2),
        finish_reasons=st.just("length"),
        include_usage=st.just(True),
        models=st.just("m"),
    )
)
def test_streams_use_the_given_strategies(chunks: list[dict[str, Any]]) -> None:
    per_choice = check_stream(chunks, 3, 3)
    assert sorted(per_choice) == [0, 1]
    for reason, deltas in per_choice.values():
        assert reason == "length"
        assert [d["delta"]["content"] for d in deltas] == ["日本🚀"] * 3
    assert chunks[-1]["choices"] == []
    assert {c["model"] for c in chunks} == {"m"}


@given(
    chat_completion_streams(
        st.sampled_from(['"é\n', "\\u"]),
        min_size=2,
        max_size=2,
        finish_reasons=st.just("tool_calls"),
        include_usage=st.just(False),
    )
)
def test_tool_call_arguments_join_to_the_drawn_text(chunks: list[dict[str, Any]]) -> None:
    for reason, deltas in check_stream(chunks, 2, 2).values():
        assert reason == "tool_calls"
        (index,) = {c["index"] for c in deltas}
        fragments = [
            c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
            for c in chunks
            if c["choices"][0]["index"] == index and "tool_calls" in c["choices"][0]["delta"]
        ]
        pieces = [json.loads(f'"{f}"') for f in fragments[2:-1]]
        assert json.loads("".join(fragments[1:])) == {"input": "".join(pieces)}
        assert all(p in ('"é\n', "\\u") for p in pieces)


@given(chat_completion_chunks(include_usage=st.just(False)))
def test_chunks_are_single_stream_chunks(chunk: dict[str, Any]) -> None:
    assert chunk["object"] == "chat.completion.chunk"
    assert len(chunk["choices"]) == 1


def test_streams_shrink_to_the_plainest() -> None:
    base = {"id": "chatcmpl-0", "object": "chat.completion.chunk", "created": 0}
    base["model"] = "fake-small"
    role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
    stop = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert find(chat_completion_streams(), lambda s: True) == [
        {**base, "choices": [{**role, "finish_reason": None}]},
        {**base, "choices": [stop]},
    ]
    two = find(chat_completion_streams(), lambda s: len(check_stream(s)) == 2)
    assert [c["choices"][0]["index"] for c in two] == [0, 0, 1, 1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_size": -1},
        {"min_size": 2, "max_size": 1},
        {"min_size": True},
        {"max_size": 1.5},
        {"contents": "hello"},
        {"choices": 2},
        {"include_usage": True},
        {"finish_reasons": ["stop"]},
    ],
)
def test_streams_reject_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        chat_completion_streams(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"choices": st.just(0)},
        {"finish_reasons": st.just("eos")},
        {"contents": st.just(b"bytes")},
        {"include_usage": st.just(1)},
        {"models": st.just(3)},
    ],
)
def test_streams_reject_bad_drawn_values(kwargs: dict[str, Any]) -> None:
    @given(chat_completion_streams(**kwargs, min_size=1))
    def inner(chunks: list[dict[str, Any]]) -> None:
        pass

    with pytest.raises(InvalidArgument):
        inner()


# -- SSE encodings -----------------------------------------------------------------------------


@given(st.data(), chat_completion_streams(max_size=4))
def test_encodings_read_back_as_the_stream(data: st.DataObject, chunks: list[dict[str, Any]]):
    wire = data.draw(sse_encodings(chunks))
    events = read([wire]).events
    assert events[-1].data == "[DONE]"
    assert [json.loads(e.data) for e in events[:-1]] == chunks
    pieces = data.draw(chunkings(wire))
    assert read(pieces).events == events


@given(st.data(), st.lists(sse_events(), max_size=5))
def test_events_read_back_exactly(data: st.DataObject, events: list[SSEEvent]) -> None:
    wire = data.draw(sse_encodings(events, done=st.just(False)))
    expected, last_id, retry = [], "", None
    for e in events:
        last_id = e.id if e.id is not None else last_id
        retry = e.retry if e.retry is not None else retry
        expected.append(Event(e.event or "message", e.data, last_id))
    reader = read(data.draw(chunkings(wire)))
    assert reader.events == expected
    assert reader.retry == retry


LEADING_SPACES = [SSEEvent(" a\n  b\n", event=" e", id=" 1"), " c", {" d": "  "}]


@given(sse_encodings(LEADING_SPACES, allow_fields=False, done=st.just(False)))
def test_values_starting_with_a_space_keep_it(wire: bytes) -> None:
    events = read([wire]).events
    assert events[:2] == [Event(" e", " a\n  b\n", " 1"), Event("message", " c", " 1")]
    assert json.loads(events[2].data) == {" d": "  "}


@given(st.data(), st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\r"))))
def test_strings_are_sent_as_data(data: st.DataObject, texts: list[str]) -> None:
    wire = data.draw(sse_encodings(texts, done=st.booleans()))
    got = [e.data for e in read([wire]).events]
    assert got in (texts, [*texts, "[DONE]"])


@pytest.mark.parametrize(("eol", "forbidden"), [("\n", b"\r"), ("\r", b"\n"), ("\r\n", b"\r\r")])
@given(data=st.data())
def test_encodings_use_one_line_ending(data: st.DataObject, eol: str, forbidden: bytes) -> None:
    chunks = data.draw(chat_completion_streams(max_size=2))
    wire = data.draw(sse_encodings(chunks, line_endings=st.just(eol)))
    assert forbidden not in wire
    assert wire.endswith(eol.encode())
    if eol == "\r\n":
        assert wire.count(b"\r") == wire.count(b"\n") == wire.count(b"\r\n")


@given(st.data(), chat_completion_streams(max_size=3))
def test_plain_encodings_are_data_lines_only(data: st.DataObject, chunks: list[dict[str, Any]]):
    wire = data.draw(
        sse_encodings(
            chunks,
            line_endings=st.just("\n"),
            allow_comments=False,
            allow_fields=False,
            allow_multiline=False,
        )
    )
    lines = wire.split(b"\n")
    assert lines[1::2] == [b""] * (len(chunks) + 1)
    assert all(line.startswith(b"data:") for line in lines[0:-1:2])
    assert lines[-3] in (b"data: [DONE]", b"data:[DONE]")


def test_encodings_shrink_to_the_plainest() -> None:
    events = [{"a": "é"}, "x"]
    assert find(sse_encodings(events), lambda w: True) == (
        b'data: {"a":"\xc3\xa9"}\n\ndata: x\n\ndata: [DONE]\n\n'
    )
    assert find(sse_encodings(events, done=st.booleans()), lambda w: b"DONE" not in w) == (
        b'data: {"a":"\xc3\xa9"}\n\ndata: x\n\n'
    )


def test_encodings_cover_the_variants() -> None:
    # each variant is reachable: a comment, an id line, a spaceless data line, a multi-line event
    chunks = [{"choices": [{"delta": {"content": "ß"}}]}, {"choices": []}]
    for needle in (b"\n:", b"id:", b"data:{", b"data:   "):
        found = find(
            sse_encodings(chunks, line_endings=st.just("\n")),
            lambda w, needle=needle: needle in w,
            settings=settings(database=None, max_examples=2000, phases=[Phase.generate]),
        )
        assert needle in found
        assert [json.loads(e.data) for e in read([found]).events[:-1]] == chunks


@pytest.mark.parametrize(
    ("events", "kwargs"),
    [
        ("data: x", {}),
        (b"abc", {}),
        ([3], {}),
        ([{"x": float("nan")}], {}),
        ([{"x": object()}], {}),
        (["a\rb"], {}),
        ([SSEEvent("x", event="a\nb")], {}),
        ([SSEEvent("x", event="")], {}),
        ([SSEEvent("x", id="a\x00")], {}),
        ([SSEEvent("x", retry=-1)], {}),
        ([], {"line_endings": "\n"}),
        ([], {"done": True}),
        ([], {"allow_comments": "no"}),
    ],
)
def test_encodings_reject_bad_arguments(events: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        sse_encodings(events, **kwargs)


@pytest.mark.parametrize("kwargs", [{"line_endings": st.just("\n\n")}, {"done": st.just("yes")}])
def test_encodings_reject_bad_drawn_values(kwargs: dict[str, Any]) -> None:
    @given(sse_encodings(["x"], **kwargs))
    def inner(wire: bytes) -> None:
        pass

    with pytest.raises(InvalidArgument):
        inner()


def test_events_reject_bad_arguments() -> None:
    with pytest.raises(InvalidArgument):
        sse_events("x")
    with pytest.raises(InvalidArgument):
        sse_events(allow_fields=None)

    @given(sse_events(st.just("a\rb")))
    def inner(event: SSEEvent) -> None:
        pass

    with pytest.raises(InvalidArgument):
        inner()


@given(sse_events(st.just("d"), allow_fields=False))
def test_events_without_fields(event: SSEEvent) -> None:
    assert event == SSEEvent("d")


# -- chunkings ---------------------------------------------------------------------------------


@given(st.data(), st.binary(), st.integers(0, 5), st.integers(0, 5))
def test_chunkings_join_to_the_data(data: st.DataObject, blob: bytes, a: int, b: int) -> None:
    lo, hi = min(a, b, len(blob)), min(max(a, b), max(len(blob), 1))
    if blob:
        lo, hi = max(lo, 1), max(hi, 1)
    chunks = data.draw(chunkings(blob, min_size=lo, max_size=hi))
    assert b"".join(chunks) == blob
    assert all(chunks)
    assert lo <= len(chunks) <= hi


@given(st.data(), st.binary(max_size=6), st.integers(0, 4))
def test_chunkings_may_have_empty_chunks(data: st.DataObject, blob: bytes, size: int) -> None:
    chunks = data.draw(chunkings(blob, min_size=size, max_size=size + 2, allow_empty=True))
    assert b"".join(chunks) == blob
    assert max(size, 1 if blob else 0) <= len(chunks) <= size + 2


def test_chunkings_shrink_to_one_chunk() -> None:
    assert find(chunkings(b"hello"), lambda c: True) == [b"hello"]
    assert find(chunkings(b""), lambda c: True) == []
    text = "日本".encode()

    def splits_a_character(chunks: list[bytes]) -> bool:
        try:
            [c.decode() for c in chunks]
        except UnicodeDecodeError:
            return True
        return False

    assert find(chunkings(text), splits_a_character) == [text[:1], text[1:]]
    assert find(chunkings(b"ab", allow_empty=True), lambda c: b"" in c) == [b"", b"ab"]
    assert find(chunkings(b"", min_size=2, allow_empty=True), lambda c: True) == [b"", b""]


@pytest.mark.parametrize(
    ("blob", "kwargs"),
    [
        ("text", {}),
        (b"ab", {"min_size": 3}),
        (b"ab", {"max_size": 0}),
        (b"", {"min_size": 1}),
        (b"ab", {"min_size": 2, "max_size": 1}),
        (b"ab", {"min_size": -1}),
        (b"ab", {"allow_empty": 1}),
    ],
)
def test_chunkings_reject_bad_arguments(blob: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        chunkings(blob, **kwargs)


# -- fault scripts -----------------------------------------------------------------------------


@given(fault_scripts(min_size=1, max_size=4))
def test_fault_scripts_are_accepted_by_the_provider(script: list[list[Any]]) -> None:
    assert 1 <= len(script) <= 4
    fake = FakeProvider(script=script)
    assert fake.config.script == tuple(tuple(step) for step in script)


_TEXT_FREE = [
    k
    for k in BEHAVIOUR_KINDS
    if k not in {"error_event", "status", "keepalive", "fields", "context_length_exceeded"}
]  # free text (a message, a comment) may hold what the header text cannot


@given(st.lists(behaviours(_TEXT_FREE), max_size=4))
def test_behaviours_round_trip_through_the_header(step: list[Any]) -> None:
    assert parse_behaviours(format_behaviours(step)) == step


@given(behaviours({"cut", "chunking"}))
def test_behaviours_of_some_kinds(behaviour: Any) -> None:
    assert isinstance(behaviour, Cut | Chunking)


@given(behaviours({"hang", "slow_first_byte", "slow_chunks"}, max_delay=0.01))
def test_behaviour_delays_are_bounded(behaviour: Hang | SlowChunks | SlowFirstByte) -> None:
    assert behaviour.seconds is not None
    assert 0 <= behaviour.seconds <= 0.01


@given(fault_scripts(st.lists(behaviours(["hang"]), min_size=1, max_size=1), max_size=2))
def test_default_delays_are_zero(script: list[list[Any]]) -> None:
    assert all(step == [Hang(seconds=0.0)] for step in script)


def test_fault_scripts_shrink_to_the_plainest() -> None:
    assert find(fault_scripts(), lambda s: True) == []
    assert find(fault_scripts(min_size=2), lambda s: True) == [[], []]
    assert find(fault_scripts(), lambda s: any(s)) == [[parse_behaviours("ok")[0]]]


@pytest.mark.parametrize(
    ("function", "kwargs"),
    [
        (behaviours, {"kinds": "cut"}),
        (behaviours, {"kinds": []}),
        (behaviours, {"kinds": ["cut", "explode"]}),
        (behaviours, {"kinds": 3}),
        (behaviours, {"max_delay": -1}),
        (behaviours, {"max_delay": float("inf")}),
        (behaviours, {"max_delay": "1"}),
        (fault_scripts, {"min_size": -1}),
        (fault_scripts, {"min_size": 3, "max_size": 2}),
        (fault_scripts, {"steps": [[]]}),
    ],
)
def test_fault_scripts_reject_bad_arguments(function: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        function(**kwargs)


# -- profiles ----------------------------------------------------------------------------------


def test_profiles_are_registered_and_loaded() -> None:
    register_profiles()  # idempotent
    dev, ci = settings.get_profile("dev"), settings.get_profile("ci")
    assert (dev.max_examples, dev.deadline) == (25, None)
    assert (ci.max_examples, ci.deadline, ci.derandomize, ci.print_blob) == (300, None, False, True)
    current = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
    assert settings.default.max_examples == current.max_examples
