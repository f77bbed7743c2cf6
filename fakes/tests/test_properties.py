"""Properties of the fakes themselves, for any fault script, seed and requests: every reply is
well-formed, truncations and cuts keep a prefix of the normal body, chunking never changes the
bytes, the same seed and requests give the same bytes, and each script step answers exactly one
request."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from waterfall_fakes import (
    Behaviour,
    BigEvent,
    Chunking,
    ContentFilter,
    ContextLengthExceeded,
    Cut,
    DoubleDone,
    ErrorEvent,
    FakeProvider,
    FakeTransport,
    InsufficientBalance,
    LineEndings,
    MalformedEvent,
    NoDone,
    NoUsage,
    RateLimit,
    Reply,
    Stall,
    Status,
    Truncate,
)
from waterfall_fakes.strategies import BEHAVIOUR_KINDS, behaviours, fault_scripts

CHAT, EMBEDDINGS = "/v1/chat/completions", "/v1/embeddings"
MODELS = ("fake-small", "fake-medium", "fake-large")
NOW = 1_700_000_000.5


def clock() -> float:
    return NOW


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


chat_bodies = st.fixed_dictionaries(
    {
        "model": st.sampled_from(MODELS),
        "messages": st.just([{"role": "user", "content": "Say something nice"}]),
    },
    optional={
        "stream": st.booleans(),
        "n": st.integers(1, 3),
        "max_tokens": st.integers(0, 20),
        "stream_options": st.just({"include_usage": True}),
    },
).map(_dumps)
stream_bodies = st.fixed_dictionaries(
    {
        "model": st.sampled_from(MODELS),
        "messages": st.just([{"role": "user", "content": "Stream please"}]),
        "stream": st.just(True),
    },
    optional={"n": st.integers(1, 3), "stream_options": st.just({"include_usage": True})},
).map(_dumps)
embedding_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(MODELS), "input": st.sampled_from(["hello", ["a b", "c"]])}
).map(_dumps)
bad_bodies = st.sampled_from(
    [
        b"",
        b"not json",
        b"[1]",
        b'{"model": "fake-small"}',
        b'{"model": "nope", "messages": [], "input": "x"}',
        b'{"model": "fake-small", "messages": [], "n": 9}',
    ]
)
requests = st.one_of(
    st.tuples(st.just(CHAT), stream_bodies),
    st.tuples(st.just(CHAT), chat_bodies),
    st.tuples(st.just(EMBEDDINGS), embedding_bodies),
    st.tuples(st.sampled_from([CHAT, EMBEDDINGS]), bad_bodies),
)
# gates decide whether a step applies at all: their own properties are in test_faults.py
steps = st.lists(behaviours(set(BEHAVIOUR_KINDS) - {"when"}), max_size=4)
seeds = st.integers(0, 2**32)


def provider(seed: int, script: list[list[Behaviour]] | None = None, **kw: Any) -> FakeProvider:
    return FakeProvider(seed=seed, script=script or [], clock=clock, **kw)


def answer(seed: int, step: list[Behaviour], request: tuple[str, bytes]) -> Reply:
    """The reply of a fresh fake to one request answered with ``step``."""
    path, body = request
    return provider(seed, [step]).handle("POST", path, {}, body)


def expected_status(request: tuple[str, bytes], step: list[Behaviour]) -> int:
    """The documented precedence: a bad request, else the first scripted failure, else 200."""
    path, body = request
    try:
        req = json.loads(body)
    except ValueError:
        return 400
    need = "messages" if path == CHAT else "input"
    if not isinstance(req, dict) or "model" not in req or need not in req:
        return 400
    if req["model"] not in MODELS:
        return 404
    n = req.get("n") or 1
    if path == CHAT and (not isinstance(n, int) or not 1 <= n <= 8):
        return 400
    for b in step:
        if isinstance(b, RateLimit):
            return 429
        if isinstance(b, InsufficientBalance):
            return 402
        if isinstance(b, Status):
            return b.code
        if isinstance(b, ContextLengthExceeded) or (
            isinstance(b, ContentFilter) and b.after is None
        ):
            return 400
    return 200


def sse_data(body: bytes) -> list[str]:
    """The data of each event of a complete SSE body (comments and other fields skipped)."""
    events, data = [], []
    for line in re.split(r"\r\n|\r|\n", body.decode())[:-1]:
        if not line:
            if data:
                events.append("\n".join(data))
            data = []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value.removeprefix(" "))
    return events


def has(step: list[Behaviour], *kinds: type) -> bool:
    return any(isinstance(b, kinds) for b in step)


def check_reply(reply: Reply, request: tuple[str, bytes], step: list[Behaviour]) -> None:
    """Assert that ``reply`` is a well-formed answer to ``request`` under ``step``."""
    status = expected_status(request, step)
    assert reply.status == status
    assert all(reply.chunks[:-1])
    assert reply.chunks[-1:] != (b"",) or has(step, Stall)  # a stall at the very end
    assert reply.delays == (0.0,) * len(reply.chunks)
    assert reply.headers_delay == 0.0
    assert reply.cut == has(step, Cut)
    headers = dict(reply.headers)
    assert headers["x-fake-name"] == "fake"
    if reply.cut:
        return  # the cut property below checks what is left
    body = reply.body
    if headers["content-type"] == "application/json":
        assert headers["content-length"] == str(len(body))
        obj = json.loads(body)
        if status >= 400:
            assert list(obj) == ["error"]
            assert isinstance(obj["error"]["message"], str)
        elif request[0] == CHAT:
            assert obj["object"] == "chat.completion"
            assert len(obj["choices"]) == (json.loads(request[1]).get("n") or 1)
            assert ("usage" in obj) == (not has(step, NoUsage))
        else:
            assert obj["object"] == "list"
        return
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert status == 200
    style = next((b.style for b in step if isinstance(b, LineEndings)), "lf")
    if style == "lf":
        assert b"\r" not in body
    elif style == "cr":
        assert b"\n" not in body
    else:
        assert body.count(b"\r") == body.count(b"\n") == body.count(b"\r\n")
    events = sse_data(body)
    done = len(events) - len([e for e in events if e != "[DONE]"])
    assert events[len(events) - done :] == ["[DONE]"] * done  # only at the end
    assert done in (0, 1, 2)
    if done == 2:
        assert has(step, DoubleDone)
    if done == 0:
        assert has(step, NoDone, Truncate, ErrorEvent)
    malformed = 0
    for data in events[: len(events) - done]:
        try:
            obj = json.loads(data)
        except ValueError:
            malformed += 1
            continue
        if "error" in obj:
            assert has(step, ErrorEvent)
            assert list(obj) == ["error"]
        else:
            assert obj["object"] == "chat.completion.chunk"
    assert malformed <= sum(isinstance(b, MalformedEvent) for b in step)


def step_of(script: list[list[Behaviour]], cycle: bool, number: int) -> list[Behaviour]:
    """The step that answers the ``number``-th chat or embeddings request."""
    if cycle and script:
        return script[number % len(script)]
    return script[number] if number < len(script) else []


@given(fault_scripts(steps, max_size=6), seeds, st.lists(requests, max_size=8), st.booleans())
@example(  # an error event first, and padding asked for there: the error is not padded
    [[ErrorEvent(after=0), BigEvent(size=1, after=0)]],
    0,
    [("/v1/chat/completions", b'{"model": "fake-small", "messages": [], "stream": true}')],
    False,
)
def test_every_reply_is_well_formed(
    script: list[list[Behaviour]], seed: int, reqs: list[tuple[str, bytes]], cycle: bool
) -> None:
    fake = provider(seed, script, cycle=cycle)
    for number, (path, body) in enumerate(reqs):
        reply = fake.handle("POST", path, {}, body)
        check_reply(reply, (path, body), step_of(script, cycle, number))


@given(
    fault_scripts(steps, max_size=5),
    st.lists(st.sampled_from(["chat", "embeddings", "models", "health"]), max_size=12),
    st.booleans(),
)
def test_each_step_answers_exactly_one_request(
    script: list[list[Behaviour]], calls: list[str], cycle: bool
) -> None:
    fake = provider(0, script, cycle=cycle)
    bodies = {"chat": (CHAT, b"{}"), "embeddings": (EMBEDDINGS, b"[]")}
    for call in calls:
        if call in bodies:
            path, body = bodies[call]
            fake.handle("POST", path, {}, body)
        else:
            fake.handle("GET", "/v1/models" if call == "models" else "/health", {}, b"")
    assert len(fake.requests) == len(calls)
    answered = [r.behaviours for r in fake.requests if r.path in (CHAT, EMBEDDINGS)]
    assert answered == [tuple(step_of(script, cycle, i)) for i in range(len(answered))]
    assert all(r.behaviours == () for r in fake.requests if r.method == "GET")


@given(fault_scripts(steps, max_size=4), seeds, st.lists(requests, max_size=6))
def test_the_same_seed_and_requests_give_the_same_bytes(
    script: list[list[Behaviour]], seed: int, reqs: list[tuple[str, bytes]]
) -> None:
    first, second = provider(seed, script), provider(seed, script)
    replies = [first.handle("POST", path, {}, body) for path, body in reqs]
    assert [second.handle("POST", path, {}, body) for path, body in reqs] == replies
    first.reset()
    assert [first.handle("POST", path, {}, body) for path, body in reqs] == replies


@given(steps, seeds, requests, st.integers(0, 12))
def test_truncating_keeps_a_prefix_of_the_normal_body(
    step: list[Behaviour], seed: int, request: tuple[str, bytes], events: int
) -> None:
    normal = answer(seed, step, request)
    truncated = answer(seed, [*step, Truncate(events=events)], request)
    assert truncated.status == normal.status
    assert normal.body.startswith(truncated.body)


@given(steps, seeds, requests, st.integers(0, 600))
def test_a_cut_keeps_a_prefix_of_the_normal_body(
    step: list[Behaviour], seed: int, request: tuple[str, bytes], size: int
) -> None:
    step = [b for b in step if not isinstance(b, Cut)]
    normal = answer(seed, step, request)
    cut = answer(seed, [*step, Cut(bytes=size)], request)
    assert (cut.status, cut.headers, cut.cut) == (normal.status, normal.headers, True)
    assert cut.body == normal.body[:size]
    assert all(cut.chunks)
    assert not normal.cut


@given(steps, seeds, requests, behaviours(["chunking"]))
def test_chunking_never_changes_the_bytes(
    step: list[Behaviour], seed: int, request: tuple[str, bytes], chunking: Chunking
) -> None:
    step = [b for b in step if not isinstance(b, Chunking | Cut | Stall)]  # a stall splits too
    normal = answer(seed, step, request)
    chunked = answer(seed, [*step, chunking], request)
    assert (chunked.status, chunked.headers, chunked.body) == (
        normal.status,
        normal.headers,
        normal.body,
    )
    assert all(chunked.chunks)
    sizes = [len(c) for c in chunked.chunks]
    if chunking.size is not None:
        assert sizes[:-1] == [chunking.size] * (len(sizes) - 1)
        assert all(0 < s <= chunking.size for s in sizes[-1:])
    elif chunking.at is not None:
        inside = sorted({a for a in chunking.at if 0 < a < len(normal.body)})
        ends = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
        assert ends == inside
    else:
        assert all(0 < s <= chunking.max_size for s in sizes[:-1])


@given(steps, seeds, requests)
def test_the_transport_hands_over_exactly_the_chunks(
    step: list[Behaviour], seed: int, request: tuple[str, bytes]
) -> None:
    expected = answer(seed, step, request)
    path, body = request
    client = httpx.Client(transport=FakeTransport(provider(seed, [step])), base_url="http://f")
    got: list[bytes] = []
    with client, client.stream("POST", path, content=body) as response:
        assert response.status_code == expected.status
        if expected.cut:
            with pytest.raises(httpx.RemoteProtocolError):
                got.extend(response.iter_raw())
        else:
            got.extend(response.iter_raw())
    assert got == [c for c in expected.chunks if c]  # a stall at the very end is an empty one
