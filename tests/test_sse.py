"""The incremental SSE parser: WHATWG event-stream rules, any chunking, bounded memory.

Several cases re-express, in our own words, well-known cases from other suites:

- the four examples of the WHATWG spec's "Interpreting an event stream" section
  (https://html.spec.whatwg.org/multipage/server-sent-events.html), also used by httpx-sse's
  ``tests/test_decoders.py``;
- the parser cases of sseclient-py (mpetazzoni/sseclient, ``tests/test_sseclient.py``, itself
  after the node ``eventsource`` suite): chopped-up UTF-8, CR and CRLF separators, empty
  ``data:`` lines, whitespace kept at line ends, no splitting on Unicode line separators and
  a JSON object split over ``data:`` lines across chunks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from waterfall_asgi.sse import SSEEvent, SSEParser, after_last_blank_line
from waterfall_fakes import FakeProvider
from waterfall_fakes import strategies as wst


def feed_all(chunks: Iterable[bytes], parser: SSEParser | None = None) -> list[SSEEvent]:
    parser = SSEParser() if parser is None else parser
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events


def parse(data: bytes, max_bytes: int = 64 * 1024) -> list[SSEEvent]:
    return SSEParser(max_bytes).feed(data)


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def every_way(data: bytes) -> list[list[bytes]]:
    """The whole, byte by byte, and every split in two."""
    return [[data], byte_by_byte(data)] + [[data[:i], data[i:]] for i in range(len(data) + 1)]


def msg(data: str, event: str = "message", id: str | None = None) -> SSEEvent:
    return SSEEvent(data, event, id)


# -- the WHATWG examples -----------------------------------------------------------------------
def test_whatwg_example_multiline_stock_quote() -> None:
    data = b"data: YHOO\ndata: +2\ndata: 10\n\n"
    for chunks in every_way(data):
        assert feed_all(chunks) == [msg("YHOO\n+2\n10")]


def test_whatwg_example_comments_and_ids() -> None:
    data = (
        b": test stream\n\n"
        b"data: first event\nid: 1\n\n"
        b"data:second event\nid\n\n"
        b"data:  third event\n\n"
    )
    parser = SSEParser()
    assert feed_all([data], parser) == [
        msg("first event", id="1"),
        msg("second event", id=""),  # a bare "id" resets the last event ID
        msg(" third event", id=""),  # only one space is dropped; the ID persists
    ]
    assert parser.comments == 1
    assert parser.last_event_id == ""


def test_whatwg_example_empty_data_lines() -> None:
    # "data" alone is a data line with an empty value; the last event never ends.
    data = b"data\n\ndata\ndata\n\ndata:"
    for chunks in every_way(data):
        assert feed_all(chunks) == [msg(""), msg("\n")]


def test_whatwg_example_space_after_colon_is_optional() -> None:
    assert parse(b"data:test\n\ndata: test\n\n") == [msg("test"), msg("test")]


# -- line ends ---------------------------------------------------------------------------------
STREAM = "event: add\ndata: Aslak\ndata: Hellesøy\nid: 7\n\n: ping\ndata: €豆腐\n\n"
EXPECTED = [SSEEvent("Aslak\nHellesøy", "add", "7"), SSEEvent("€豆腐", "message", "7")]


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_every_line_end_in_any_chunking(eol: str) -> None:
    data = STREAM.replace("\n", eol).encode()
    for chunks in every_way(data):
        parser = SSEParser()
        assert feed_all(chunks, parser) == EXPECTED
        assert parser.comments == 1


def test_mixed_line_ends() -> None:
    data = b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r"
    assert parse(data) == [msg("a\nb\nc"), msg("d")]


def test_cr_at_the_end_of_a_chunk_and_lf_at_the_start_of_the_next_is_one_line_end() -> None:
    assert feed_all([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]) == [msg("a\nb")]


def test_cr_at_the_end_of_a_chunk_followed_by_anything_else() -> None:
    assert feed_all([b"data: a\r", b"data: b\r", b"\r"]) == [msg("a\nb")]
    assert feed_all([b"data: a\r", b"\r", b"data: b\r", b"\r"]) == [msg("a"), msg("b")]


def test_regression_an_empty_chunk_between_cr_and_lf() -> None:
    # An empty chunk used to make the parser forget the CR, so the LF after it became a blank
    # line and dispatched the event in the middle.
    chunks = [b"data: a\r", b"", b"\ndata: b\r\n", b"", b"", b"\r", b"", b"\n"]
    assert feed_all(chunks) == [msg("a\nb")]


def test_unicode_line_separators_are_not_line_ends() -> None:
    text = "Hello\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
    assert parse(f"data: {text}\n\n".encode()) == [msg(text)]


def test_json_split_over_data_lines_and_chunks() -> None:
    chunks = [
        b'event: test event\r\ndata: {\r\ndata:     "split": "json objects",',
        b'\r\ndata:     "in": "SSE",\r\ndata:     "ok": 1\r\ndata: }\r\n\r\n',
    ]
    events = feed_all(chunks)
    assert events == [
        SSEEvent('{\n    "split": "json objects",\n    "in": "SSE",\n    "ok": 1\n}', "test event")
    ]
    assert json.loads(events[0].data) == {"split": "json objects", "in": "SSE", "ok": 1}


# -- fields ------------------------------------------------------------------------------------
def test_comments_are_counted_not_dispatched() -> None:
    parser = SSEParser()
    assert parser.feed(b":\n: keep-alive\n\n:x\ndata: a\n:inside\n\n") == [msg("a")]
    assert parser.comments == 4


def test_event_type_applies_to_one_event() -> None:
    data = b"event: greeting\ndata: Hello\n\ndata: World\n\nevent:\ndata: empty type\n\n"
    assert parse(data) == [msg("Hello", "greeting"), msg("World"), msg("empty type")]


def test_the_last_event_type_line_wins() -> None:
    assert parse(b"event: a\nevent: b\ndata: x\n\n") == [msg("x", "b")]


def test_id_persists_across_events_until_set_again() -> None:
    parser = SSEParser()
    data = b"data: 1\n\nid: 42\ndata: 2\n\ndata: 3\n\nid: 43\n\ndata: 4\n\nid:\ndata: 5\n\n"
    assert feed_all([data], parser) == [
        msg("1"),
        msg("2", id="42"),
        msg("3", id="42"),
        msg("4", id="43"),  # set by an event that had no data
        msg("5", id=""),
    ]
    assert parser.last_event_id == ""


def test_an_id_with_nul_is_ignored() -> None:
    parser = SSEParser()
    events = feed_all([b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n"], parser)
    assert events == [msg("a", id="1"), msg("b", id="1")]
    assert parser.last_event_id == "1"
    assert parse(b"data: test\nid: 123\x00\n\n") == [msg("test")]


@pytest.mark.parametrize(
    ("line", "retry"),
    [
        (b"retry: 10000", 10000),
        (b"retry:0", 0),
        (b"retry: 007", 7),
        (b"retry: 1667a", None),
        (b"retry: -1", None),
        (b"retry: 1.5", None),
        (b"retry: ", None),
        (b"retry", None),
        (b"retry:  5", None),  # the second space is part of the value
        ("retry: ١٢".encode(), None),  # digits, but not ASCII ones
    ],
)
def test_retry(line: bytes, retry: int | None) -> None:
    assert parse(line + b"\ndata: x\n\n") == [SSEEvent("x", retry=retry)]


def test_retry_applies_to_its_own_event() -> None:
    assert parse(b"retry: 5\ndata: a\n\ndata: b\n\n") == [SSEEvent("a", retry=5), msg("b")]


@pytest.mark.parametrize(
    "block",
    [
        b"event: greeting\n\n",
        b"retry: 10000\n\n",
        b"id: 9\n\n",
        b"something: ignore\n\n",
        b"Data: case matters\n\n",
        b" data: leading space\n\n",
        b"\n\n\n",
    ],
)
def test_events_without_data_are_not_dispatched(block: bytes) -> None:
    assert parse(block) == []
    assert parse(block + b"data: next\n\n")[0].data == "next"


def test_multiline_data_and_empty_data_lines() -> None:
    assert parse(b"data: line one\ndata:\ndata: line two\n\n") == [msg("line one\n\nline two")]
    assert parse(b"data:\ndata:line one\ndata: line two\n\n") == [msg("\nline one\nline two")]
    assert parse(b"data\n\n") == [msg("")]
    assert parse(b"data:\n\n") == [msg("")]


def test_a_field_with_no_colon_has_an_empty_value() -> None:
    assert parse(b"event\ndata\nid\n\n") == [SSEEvent("", "message", "")]


def test_whitespace_is_kept_except_one_leading_space() -> None:
    assert parse(b"event: greeting \ndata:   Hello  \n\n") == [msg("  Hello  ", "greeting ")]


def test_colons_in_the_value_are_kept() -> None:
    assert parse(b"data: a: b:c\n\n") == [msg("a: b:c")]


def test_an_unfinished_event_is_never_dispatched() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n\ndata: b\n") == [msg("a")]
    assert parser.feed(b"data: c") == []
    assert parser.buffered == len(b"data: b") + len(b"data: c")


def test_empty_lines_before_the_first_event() -> None:
    assert parse("\n\n\n\nid: 1\ndata: 我現在都看實況不玩遊戲\n\n".encode()) == [
        msg("我現在都看實況不玩遊戲", id="1")
    ]


# -- BOM and UTF-8 -----------------------------------------------------------------------------
BOM = b"\xef\xbb\xbf"


def test_a_leading_bom_is_dropped_in_any_chunking() -> None:
    for chunks in every_way(BOM + b"data: a\n\n"):
        assert feed_all(chunks) == [msg("a")]
    assert parse(BOM + b"\ndata: a\n\n") == [msg("a")]


def test_only_one_bom_and_only_at_the_start() -> None:
    # After the first, a BOM is part of the field name, which is then unknown.
    assert parse(BOM + BOM + b"data: a\n\ndata: b\n\n") == [msg("b")]
    assert parse(b"data: a\n\n" + BOM + b"data: b\n\n") == [msg("a")]
    assert feed_all([b"data: a\n\n", BOM + b"data: b\n\n"]) == [msg("a")]
    assert parse(b"data: " + BOM + b"x\n\n") == [msg("\ufeffx")]


def test_regression_no_bom_is_dropped_after_an_oversized_first_event() -> None:
    # The start-of-stream flag used to survive a skipped first line, so a BOM later was dropped.
    parser = SSEParser(max_bytes=16)
    assert feed_all([b"data: " + b"x" * 20 + b"\n\n", BOM + b"data: b\n\ndata: c\n\n"], parser) == [
        msg("c")
    ]
    assert parser.oversized == 1


def test_utf8_split_across_chunks_is_decoded_intact() -> None:
    text = "data: Aslak\n\ndata: Hellesøy 🚀 €豆腐\n\n"
    assert feed_all(byte_by_byte(text.encode())) == [msg("Aslak"), msg("Hellesøy 🚀 €豆腐")]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert parse(b"data: a\xffb\xc3\n\n") == [msg("a\ufffdb\ufffd")]


def test_a_relatively_huge_message() -> None:
    assert parse(b"data: " + b"a" * 10_000 + b"\n\n") == [msg("a" * 10_000)]


# -- bounded memory ----------------------------------------------------------------------------
def test_an_oversized_event_is_skipped_and_parsing_resumes() -> None:
    parser = SSEParser(max_bytes=32)
    big = b"id: 5\nevent: big\ndata: " + b"x" * 40 + b"\ndata: more\n: comment\n\n"
    events = feed_all([b"data: before\n\n", big, b"data: after\n\n"], parser)
    assert events == [msg("before"), msg("after", id="5")]
    assert parser.oversized == 1
    assert parser.comments == 0  # skipped with the event
    assert parser.buffered == 0


def test_the_limit_is_on_the_data_lines_of_one_event() -> None:
    line = b"data: " + b"x" * 26  # 32 bytes
    assert parse(line + b"\n\n", max_bytes=32) == [msg("x" * 26)]
    assert parse(line + b"x\n\n" + line + b"\n\n", max_bytes=32) == [msg("x" * 26)]
    # two lines of 16 fit; a third does not, even though each line is small
    two = b"data: 0123456789\n" * 2
    assert parse(two + b"\n", max_bytes=32) == [msg("0123456789\n0123456789")]
    parser = SSEParser(max_bytes=32)
    assert parser.feed(two + b"data: a\n\n" + two + b"\n") == [msg("0123456789\n0123456789")]
    assert parser.oversized == 1
    # other fields do not count towards the event, and a blank line resets the count
    assert parse(b"event: " + b"e" * 25 + b"\n" + line + b"\n\n", max_bytes=32) == [
        msg("x" * 26, "e" * 25)
    ]
    # but no single line may be longer than the limit
    assert parse(b"event: " + b"e" * 26 + b"\n" + line + b"\n\n", max_bytes=32) == []


def test_an_oversized_comment_skips_its_event() -> None:
    parser = SSEParser(max_bytes=32)
    data = b":" + b"p" * 2048 + b"\ndata: lost\n\ndata: kept\n\n"
    assert feed_all(byte_by_byte(data), parser) == [msg("kept")]
    assert (parser.oversized, parser.comments) == (1, 0)


def test_skipping_lasts_until_a_blank_line_even_across_chunks() -> None:
    parser = SSEParser(max_bytes=16)
    chunks = [b"data: " + b"x" * 20, b"y" * 5000, b"\r", b"\ndata: still skipped\r", b"\n"]
    assert feed_all(chunks, parser) == []
    assert parser.buffered == 0
    assert feed_all([b"\r", b"\ndata: ok\r\n\r\n"], parser) == [msg("ok")]
    assert parser.oversized == 1


def test_a_huge_chunk_is_never_buffered() -> None:
    parser = SSEParser(max_bytes=1024)
    events = parser.feed(b"data: " + b"z" * 1_000_000)
    assert (events, parser.buffered, parser.oversized) == ([], 0, 1)
    assert parser.feed(b"zzz\n\ndata: fine\n\n") == [msg("fine")]


def test_each_oversized_event_is_counted() -> None:
    big = b"data: " + b"b" * 100 + b"\n\n"
    parser = SSEParser(max_bytes=64)
    assert feed_all([big, b"data: 1\n\n", big, big, b"data: 2\n\n"], parser) == [
        msg("1"),
        msg("2"),
    ]
    assert parser.oversized == 3


def test_the_fakes_big_event_is_skipped_in_any_line_ending() -> None:
    body = json.dumps({"model": "fake-small", "messages": [{"role": "user", "content": "hi"}]})
    stream = json.dumps({**json.loads(body), "stream": True}).encode()
    for style in ("lf", "crlf", "cr"):
        spec = f"line_endings:style={style}; chunking:size=7; keepalive:every=1; fields; "
        plain = FakeProvider().handle("POST", "/v1/chat/completions", {}, stream)
        reply = FakeProvider().handle(
            "POST",
            "/v1/chat/completions",
            {"x-fake-behaviour": spec + "big_event:size=3000,after=1"},
            stream,
        )
        parser = SSEParser(max_bytes=1024)
        events = feed_all(reply.chunks, parser)
        assert parser.oversized == 1
        assert parser.comments == len(feed_all(plain.chunks))  # a keep-alive before each
        assert len(events) == len(feed_all(plain.chunks)) - 1
        assert [e.id for e in events][:3] == ["1", "3", "4"]  # the second event is missing
        assert {e.event for e in events} == {"completion"}
        assert events[-1].data == "[DONE]"
        assert feed_all([reply.body], SSEParser(max_bytes=1024)) == events


# -- properties --------------------------------------------------------------------------------
def outcome(parser: SSEParser, chunks: Sequence[bytes]) -> tuple[Any, ...]:
    events = feed_all(chunks, parser)
    return events, parser.comments, parser.oversized, parser.last_event_id, parser.buffered


@st.composite
def encoded_streams(draw: st.DrawFn) -> tuple[list[dict[str, Any]], bytes, list[bytes]]:
    stream = draw(wst.chat_completion_streams(max_size=4))
    data = draw(wst.sse_encodings(stream))
    chunks = draw(wst.chunkings(data, allow_empty=True))
    return stream, data, chunks


@given(encoded_streams())
def test_any_chunking_of_any_encoding_gives_the_streams_json(
    drawn: tuple[list[dict[str, Any]], bytes, list[bytes]],
) -> None:
    stream, data, chunks = drawn
    whole = outcome(SSEParser(), [data])
    assert outcome(SSEParser(), chunks) == whole
    events = whole[0]
    assert [json.loads(e.data) for e in events[:-1]] == stream
    assert events[-1].data == "[DONE]"
    assert whole[4] == 0  # nothing left over


@given(st.data())
def test_any_events_come_back_exactly(data: st.DataObject) -> None:
    sent = data.draw(st.lists(wst.sse_events(), max_size=5))
    encoded = data.draw(wst.sse_encodings(sent, done=st.just(False)))
    chunks = data.draw(wst.chunkings(encoded, allow_empty=True))
    expected, last_id = [], None
    for event in sent:
        last_id = event.id if event.id is not None else last_id  # the last-event-ID buffer
        expected.append(SSEEvent(event.data, event.event or "message", last_id, event.retry))
    assert feed_all(chunks) == expected


# Bytes that matter to the parser, so that random streams hit every rule.
_PIECES = [b"data", b"id", b"event", b"retry", b":", b": ", b" ", b"\r", b"\n", b"\r\n", b"7"]
_PIECES += [b"x", b"\x00", BOM, "é".encode(), "🚀".encode(), b"\xff"]
_PIECES += [b"data: ", b"data: x\n\n", b"\n\n"]  # the shapes the parser's fast path takes


@given(
    st.lists(st.sampled_from(_PIECES), max_size=60)
    .map(b"".join)
    .flatmap(lambda data: st.tuples(st.just(data), wst.chunkings(data, allow_empty=True))),
    st.sampled_from([4, 8, 16, 64 * 1024]),
)
def test_any_bytes_in_any_chunking_parse_as_a_whole(
    drawn: tuple[bytes, list[bytes]], max_bytes: int
) -> None:
    data, chunks = drawn
    whole = outcome(SSEParser(max_bytes), [data])
    assert outcome(SSEParser(max_bytes), chunks) == whole
    assert outcome(SSEParser(max_bytes), byte_by_byte(data)) == whole


_LINE_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=24)


@given(
    events=st.lists(st.lists(_LINE_TEXT, min_size=1, max_size=3), max_size=8),
    max_bytes=st.integers(8, 48),
    eol=st.sampled_from(["\n", "\r\n", "\r"]),
    data=st.data(),
)
def test_exactly_the_oversized_events_are_missing(
    events: list[list[str]], max_bytes: int, eol: str, data: st.DataObject
) -> None:
    blocks = [[f"data: {line}".encode() for line in lines] for lines in events]
    wire = b"".join(eol.encode().join([*block, b"", b""]) for block in blocks)
    chunks = data.draw(wst.chunkings(wire, allow_empty=True))
    fits = [sum(map(len, block)) <= max_bytes for block in blocks]

    parser = SSEParser(max_bytes)
    got: list[SSEEvent] = []
    for chunk in chunks:
        got += parser.feed(chunk)
        assert parser.buffered <= max_bytes
    assert [e.data for e in got] == ["\n".join(e) for e, ok in zip(events, fits, strict=True) if ok]
    assert parser.oversized == fits.count(False)
    assert parser.buffered == 0


@given(
    st.lists(st.sampled_from(_PIECES), max_size=40).map(b"".join),
    st.lists(st.sampled_from(_PIECES), max_size=60).map(b"".join),
    st.sampled_from([4, 8, 16, 64 * 1024]),
)
@example(b":\n", b"data: x\n\n", 16)  # a comment before: counted then, not by what follows
def test_plain_events_takes_exactly_what_feed_would_make_of_it(
    before: bytes, data: bytes, max_bytes: int
) -> None:
    parser, reference = SSEParser(max_bytes), SSEParser(max_bytes)
    assert feed_all([before], parser) == feed_all([before], reference)
    counted = (reference.comments, reference.oversized)
    end, count = parser.plain_events(data)
    if not end:  # nothing taken, nothing changed
        assert count == 0
        assert outcome(parser, [data]) == outcome(reference, [data])
        return
    # what feed makes of the bytes taken: `count` plain events, nothing else, nothing left
    events = feed_all([data[:end]], reference)
    lines = data[:end].split(b"\n\n")[:-1]
    assert len(events) == len(lines) == count
    assert [e.data for e in events] == [line[6:].decode("utf-8", "replace") for line in lines]
    assert all(e.event == "message" and e.retry is None for e in events)
    assert (reference.buffered, reference.comments, reference.oversized) == (0, *counted)
    assert outcome(parser, [data[end:]]) == outcome(reference, [data[end:]])


def test_plain_events_examples() -> None:
    assert SSEParser().plain_events(b"data: a\n\ndata: bc\n\ndata: d") == (19, 2)
    for refused in (
        b"data: a\n\n\n\ndata: b\n\n",  # a blank line more
        b"data: a\ndata: b\n\n",  # two lines in one event
        b"data: a\rb\n\n",  # a CR
        b"event: x\ndata: a\n\n",  # another field
        b": hi\n\ndata: a\n\n",  # a comment
        b"data: a",  # nothing whole
    ):
        assert SSEParser().plain_events(refused) == (0, 0), refused
    assert SSEParser(16).plain_events(b"data: a\n\ndata: b\n\n") == (0, 0)  # may be over the cap
    for held in (b"data: x", b"data: x\n", b"event: e\n", b"retry: 5\n", b"data: x\r", b"id"):
        parser = SSEParser()  # in the middle of an event: the next line may belong to it
        parser.feed(held)
        assert parser.plain_events(b"data: a\n\n") == (0, 0), held
    parser = SSEParser(12)
    parser.feed(b"data: far too long\n")  # skipping an oversized event, to its blank line
    assert parser.plain_events(b"data: a\n\n") == (0, 0)
    assert parser.feed(b"data: a\n\n") == []  # (a line of the skipped event)


@given(
    st.lists(st.sampled_from([b"\r", b"\n", b"x", b"data: a"]), max_size=30).map(b"".join),
    st.integers(0, 40),
)
def test_after_last_blank_line_is_after_the_last_pair_that_ends_a_line_twice(
    data: bytes, stop: int
) -> None:
    stop = min(stop, len(data))
    pairs = [i for i in range(stop - 1) if data[i : i + 2] in (b"\n\n", b"\n\r", b"\r\r")]
    assert after_last_blank_line(data, stop) == (pairs[-1] + 2 if pairs else 0)
    assert after_last_blank_line(data) == after_last_blank_line(data, len(data))
