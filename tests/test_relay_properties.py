"""The relay, property by property: for any valid stream, any SSE encoding of it and any chunking,
the client receives the upstream bytes unchanged — minus only the usage chunk the router injected,
plus only the ``[DONE]`` a whole answer came without or an error event for an unfinished stream —
and the observer's result is the one of reading the whole stream at once."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waterfall_asgi.config import Deployment
from waterfall_asgi.relay import EventAligner, RelayOutcome, relay_stream
from waterfall_asgi.router import Served
from waterfall_asgi.sse import SSEParser
from waterfall_asgi.usage import StreamObserver, usage_only_chunk
from waterfall_fakes.strategies import chat_completion_streams, chunkings, sse_encodings


class Chunks:
    """An upstream response (an ``UpstreamResponse``) whose body arrives in exactly these
    chunks; ``pulled`` counts the chunks the relay has read."""

    status, reason = 200, "OK"

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = [c for c in chunks if c]
        self.headers = {"content-type": "text/event-stream"}
        self.pulled = 0

    async def read_chunk(self) -> bytes:
        if self.pulled == len(self.chunks):
            return b""
        self.pulled += 1
        return self.chunks[self.pulled - 1]

    async def aclose(self) -> None:
        pass


class ChunksThatKnowTheirEnd(Chunks):
    """The same, telling when the body has been read to its end (``at_end``, as aiohttp's
    responses can); once it has said so, it must not be read again."""

    def at_end(self) -> bool:
        return self.pulled == len(self.chunks)

    async def read_chunk(self) -> bytes:
        assert not self.at_end(), "read again after at_end() said the body was over"
        return await super().read_chunk()


async def relay(
    chunks: list[bytes],
    strip: bool,
    *,
    knows_end: bool = False,
    choices: int = 1,
    usage: bool = False,
) -> tuple[bytes, RelayOutcome]:
    response = ChunksThatKnowTheirEnd(chunks) if knows_end else Chunks(chunks)
    served = Served(Deployment(provider="p", model="m"), response, b"", False)
    sent: list[dict[str, Any]] = []
    stay = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await stay.wait()  # the client never leaves
        return {"type": "http.disconnect"}

    outcome = await relay_stream(
        served,
        send,  # type: ignore[arg-type]
        receive,  # type: ignore[arg-type]
        strip_usage=strip,
        choices=choices,
        usage=usage,
    )
    assert not sent[-1]["more_body"]
    assert all(m["more_body"] and m["body"] for m in sent[:-1])
    if knows_end:
        # the last read's events went with the end of the body: one message per read at most
        assert len(sent) <= max(1, len(response.chunks))
    return b"".join(m["body"] for m in sent), outcome


def events(body: bytes) -> list[str]:
    return [e.data for e in SSEParser().feed(body + b"\n\n")]


DONE = b"data: [DONE]\n\n"
# What may follow the last whole event when the upstream closes: nothing, an unfinished event
# (never dispatched: dropped, unless [DONE] came before it), a whole comment line (kept).
UNFINISHED = [b"", b'data: {"choices":[{"index":0,"finish_reason":"stop"}]}\n', b": ping\n"]


@dataclass
class Upstream:
    body: bytes
    chunks: list[bytes]
    done: bool
    answered: bool
    """Whether every choice asked for finished, and the usage chunk came if usage was asked."""
    choices: int
    usage: bool
    tail: bytes


@st.composite
def upstreams(draw: st.DrawFn) -> Upstream:
    """A stream, whole or cut after any of its chunks, with or without [DONE], with or without
    an unfinished event after its last whole one, in any SSE encoding and any chunking; and
    what the request asked for (its ``n``, at least the choices the stream has; its usage)."""
    stream = draw(chat_completion_streams(max_size=4), label="stream")
    indices = {c["index"] for chunk in stream for c in chunk["choices"]}
    usage = "usage" in stream[0]  # (asked for: every chunk has "usage")
    kept = stream[: draw(st.integers(0, len(stream)) | st.just(len(stream)), label="kept")]
    choices = len(indices) + draw(st.sampled_from([0, 0, 1]), label="more choices asked")
    finished = {c["index"] for chunk in kept for c in chunk["choices"] if c["finish_reason"]}
    answered = finished >= set(range(choices)) and (
        not usage or any(chunk.get("usage") for chunk in kept)
    )
    done = draw(st.booleans(), label="done")
    body = draw(
        sse_encodings(
            kept,
            done=st.just(done),
            allow_comments=True,
            allow_fields=True,
            allow_multiline=True,
        ),
        label="body",
    )
    tail = draw(st.sampled_from(UNFINISHED), label="tail")
    if tail.startswith(b"data") and body and body[-2:] not in (b"\n\n", b"\n\r", b"\r\r"):
        tail = b""  # (it would join a comment line held back with it: one unfinished event)
    chunks = draw(chunkings(body + tail), label="chunks")
    return Upstream(body, chunks, done, answered, choices, usage, tail)


@given(upstream=upstreams(), strip=st.booleans(), knows_end=st.booleans())
def test_client_bytes_are_the_upstream_bytes_less_only_the_injected_chunk(
    upstream: Upstream, strip: bool, knows_end: bool
) -> None:
    """The rule of a stream's end: ``[DONE]``, or a clean close once the answer is whole (the
    relay then appends the ``[DONE]``), is a success; any other end gets an error event."""
    body, tail = upstream.body, upstream.tail
    asked = {"choices": upstream.choices, "usage": upstream.usage}
    client, outcome = asyncio.run(
        relay(upstream.chunks, strip, knows_end=knows_end, **asked)  # type: ignore[arg-type]
    )
    # the same bytes whatever the chunking, and whether the response can tell its end or not
    assert asyncio.run(relay([body + tail], strip, **asked))[0] == client  # type: ignore[arg-type]
    upstream_events = events(body)
    kept = [e for e in upstream_events if not (strip and usage_only_chunk(e))]
    unchanged = not strip or kept == upstream_events  # nothing to cut out: byte for byte
    if upstream.done:
        assert (outcome.status, outcome.error) == ("success", None)
        assert events(client) == kept + events(tail)  # (what follows [DONE] is passed on)
        if unchanged:
            assert client == body + tail
    elif upstream.answered:  # whole but for the [DONE]: appended, and only that
        assert (outcome.status, outcome.error) == ("success", "upstream sent no [DONE]")
        assert events(client) == [*kept, "[DONE]"]
        if unchanged:
            assert client == body + (tail if tail.startswith(b":") else b"") + DONE
    else:
        assert (outcome.status, outcome.error) == ("stream_incomplete", "no [DONE]")
        *before, last = events(client)
        assert before == kept
        assert json.loads(last)["error"]["code"] == "stream_incomplete"
        if unchanged:
            assert client.startswith(body)
    # the observer saw every upstream byte, as one whole read would
    whole = StreamObserver()
    whole.feed(body + tail)
    assert outcome.usage == whole.result


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=100_000), min_size=1, max_size=4),
    cut=st.integers(min_value=512, max_value=16_384),
)
def test_huge_events_pass_through_untouched_and_memory_stays_bounded(
    sizes: list[int], cut: int
) -> None:
    lines = [b'data: {"choices":[],"pad":"' + b"x" * size + b'"}' for size in sizes]
    body = b"".join(line + b"\n\n" for line in lines) + b"data: [DONE]\n\n"
    chunks = [body[i : i + cut] for i in range(0, len(body), cut)]
    client, outcome = asyncio.run(relay(chunks, strip=True))
    assert client == body
    assert outcome.status == "success"
    assert outcome.usage.oversized == sum(len(line) > 64 * 1024 for line in lines)


def test_a_slow_client_holds_the_upstream_back() -> None:
    """Backpressure: the relay pulls the next upstream chunk only once the client took the last
    one, so a slow client never makes the proxy buffer the stream."""
    chunks = [b'data: {"choices":[],"n":%d}\n\n' % i for i in range(50)] + [b"data: [DONE]\n\n"]
    upstream = Chunks(chunks)
    served = Served(Deployment(provider="p", model="m"), upstream, b"", False)
    ahead: list[int] = []
    delivered = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal delivered
        ahead.append(upstream.pulled - delivered)
        delivered += 1
        await asyncio.sleep(0.001)  # a slow client

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    outcome = asyncio.run(relay_stream(served, send, receive))  # type: ignore[arg-type]
    assert outcome.status == "success"
    assert delivered == len(chunks) + 1  # every chunk, then the end of the body
    assert max(ahead) <= 1  # never more than the chunk being sent


def test_a_served_body_read_whole_is_at_its_end_and_reads_nothing_more() -> None:
    response = ChunksThatKnowTheirEnd([b"never read"])
    whole = Served(Deployment(provider="p", model="m"), response, b"{}", True)
    assert whole.at_end()
    assert asyncio.run(whole.read_chunk()) == b""
    assert response.pulled == 0
    chunks = [b"data: x\n\n", b"data: y\n\n"]
    streamed = Served(Deployment(provider="p", model="m"), Chunks(chunks), b"", False)
    assert not streamed.at_end()  # a response that cannot tell: never at its end

    async def rest_twice() -> tuple[list[bytes], list[bytes]]:
        return [c async for c in streamed.rest()], [c async for c in streamed.rest()]

    assert asyncio.run(rest_twice()) == (chunks, [])  # in order, then nothing: at its end


@pytest.mark.parametrize("knows_end", [False, True])
@pytest.mark.parametrize("failing", ["first", "last"])
def test_a_server_that_raises_on_a_send_is_a_client_gone(knows_end: bool, failing: str) -> None:
    """Some servers report a client that left by raising ``OSError`` from ``send``: in the
    middle of the stream, or on the message that ends the body (which carries the last events
    when the response knows its end), that is a client gone, not a failure of the request; the
    upstream is still read to its end for the usage."""
    chunks = [b'data: {"choices":[]}\n\n', b'data: {"choices":[],"usage":{"prompt_tokens":3}}\n\n']
    response = ChunksThatKnowTheirEnd(chunks) if knows_end else Chunks(chunks)
    response.chunks.append(b"data: [DONE]\n\n")
    served = Served(Deployment(provider="p", model="m"), response, b"", False)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        if (failing == "first") is bool(message["more_body"]):
            raise OSError("the connection is gone")
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    outcome = asyncio.run(relay_stream(served, send, receive))  # type: ignore[arg-type]
    assert (outcome.status, outcome.client_gone) == ("client_disconnected", True)
    assert outcome.usage.prompt_tokens == 3  # read to the end all the same
    assert outcome.usage.complete
    if failing == "first":
        assert sent == []  # nothing more is sent to a client gone


_SSE_BYTES = [b"data: ", b"x", b":", b"\r", b"\n", b"\r\n", b'{"a":1}', "é".encode()]


@given(
    st.lists(st.sampled_from(_SSE_BYTES), max_size=80)
    .map(b"".join)
    .flatmap(lambda data: st.tuples(st.just(data), chunkings(data))),
    st.sampled_from([4, 16, 64 * 1024]),
)
def test_take_hands_over_every_whole_event_at_once_and_holds_only_an_unfinished_one(
    drawn: tuple[bytes, list[bytes]], cap: int
) -> None:
    data, chunks = drawn
    aligner = EventAligner(cap)
    out = []
    for chunk in chunks:
        piece = aligner.take(chunk)
        if piece and not aligner.misaligned:
            assert piece[-2:] in (b"\n\n", b"\n\r", b"\r\r")  # it ends with a blank line
        held = bytes(aligner._pending)
        assert len(held) <= cap
        assert not any(pair in held for pair in (b"\n\n", b"\n\r", b"\r\r"))
        out.append(piece)
    assert b"".join(out) + aligner.flush() == data  # nothing lost, nothing added, in order


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("usage_last", [False, True])
def test_the_usage_chunk_is_cut_out_exactly_wherever_the_reads_split(
    eol: bytes, usage_last: bool
) -> None:
    """Every way of cutting the stream in two reads: the client gets the stream less exactly the
    usage event (its lines and the blank line after it), nothing more, nothing less. Last in
    the stream (after ``[DONE]``), with CRLF line ends, its blank line's final LF is what the
    relay holds back when the stream ends: it goes too."""
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}' + eol + eol
    before = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}' + eol + eol
    after = b": keep-alive" + eol + b"data: [DONE]" + eol + eol
    body = before + after + usage if usage_last else before + usage + after
    for cut, knows_end in itertools.product(range(1, len(body)), (False, True)):
        client, outcome = asyncio.run(relay([body[:cut], body[cut:]], True, knows_end=knows_end))
        assert client == before + after, cut
        assert outcome.status == "success"
        assert outcome.usage.prompt_tokens == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "usage_chunk",
    [
        b'{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}',
        # the same, with a key spelled with an escape: not cut, whether the observer reads the
        # event where it lies (a whole read) or the line-by-line parse does (byte by byte)
        b'{"id":"x","\\u0063hoices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}',
        b'{"id":"x","choices":[],"\\u0075sage":{"prompt_tokens":1,"completion_tokens":2}}',
    ],
)
async def test_the_usage_chunk_is_cut_the_same_way_in_any_reads(usage_chunk: bytes) -> None:
    first = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'  # no id yet
    wire = first + b"data: " + usage_chunk + b"\n\ndata: [DONE]\n\n"
    whole, _ = await relay([wire], strip=True)
    assert (await relay([wire[i : i + 1] for i in range(len(wire))], strip=True))[0] == whole
    if b"\\u" in usage_chunk:
        assert whole == wire
    else:
        assert whole == first + b"data: [DONE]\n\n"
