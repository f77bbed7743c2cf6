"""The faults a router's failure model is tested with: failures that heal, failure rates, outage
windows, context-length and content-filter errors, stalls, cuts after N tokens, complete streams
without ``[DONE]``, and models that honour or reject a prefill."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from waterfall_fakes import (
    BEHAVIOUR_HEADER,
    Behaviour,
    FakeConfig,
    FakeModel,
    FakeProvider,
    FakeTransport,
    Reply,
    Status,
    When,
    reply_words,
)
from waterfall_fakes.strategies import behaviours

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hello there"}]
BODY: dict[str, Any] = {"model": "fake-small", "messages": HELLO}
STREAM: dict[str, Any] = {**BODY, "stream": True, "stream_options": {"include_usage": True}}


class Clock:
    """A clock a test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def send(
    fake: FakeProvider, body: dict[str, Any] | None = None, header: str | None = None
) -> Reply:
    headers = {BEHAVIOUR_HEADER: header} if header is not None else {}
    return fake.handle("POST", CHAT, headers, json.dumps(body or BODY).encode())


def statuses(fake: FakeProvider, count: int, header: str | None = None) -> list[int]:
    return [send(fake, header=header).status for _ in range(count)]


def data_of(reply: Reply) -> list[Any]:
    """The data of each event of a stream, JSON decoded (``[DONE]`` as the string)."""
    out: list[Any] = []
    for line in reply.body.decode().split("\n"):
        if line.startswith("data: "):
            text = line.removeprefix("data: ")
            out.append(text if text == "[DONE]" else json.loads(text))
    return out


def text_of(events: list[Any]) -> str:
    return "".join(
        c["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict)
        for c in e.get("choices", [])
    )


# -- failures that heal ------------------------------------------------------------------------
def test_a_script_fails_once_or_n_times_then_heals() -> None:
    assert statuses(FakeProvider(script=["status:code=500"]), 3) == [500, 200, 200]
    assert statuses(FakeProvider(script=["status:code=502"] * 3), 5) == [502] * 3 + [200] * 2


def test_a_script_can_repeat_its_last_step_forever() -> None:
    fake = FakeProvider(script=["ok", "status:code=503"], repeat_last=True)
    assert statuses(fake, 5) == [200, 503, 503, 503, 503]
    fake.reset()
    assert statuses(fake, 2) == [200, 503]
    config = FakeConfig.model_validate({"script": ["rate_limit"], "repeat_last": True})
    assert statuses(FakeProvider(config), 3) == [429] * 3


def test_a_script_cannot_both_cycle_and_repeat() -> None:
    with pytest.raises(ValueError, match="either cycles or repeats"):
        FakeConfig(script=["ok"], cycle=True, repeat_last=True)


def test_a_header_gate_fails_the_first_requests_carrying_it_then_heals() -> None:
    fake = FakeProvider()
    once = "when:times=1; status:code=500"
    twice = "when:times=2; status:code=503"
    assert statuses(fake, 3, once) == [500, 200, 200]
    assert statuses(fake, 3, twice) == [503, 503, 200]  # another text, counted on its own
    assert statuses(fake, 1, once) == [200]
    assert [r.behaviours for r in fake.requests[:2]] == [(Status(code=500),), ()]


def test_a_gate_can_skip_requests_before_it_fails_them() -> None:
    fake = FakeProvider(script=["when:skip=2,times=1; status:code=500"], repeat_last=True)
    assert statuses(fake, 5) == [200, 200, 500, 200, 200]


# -- failure rates -----------------------------------------------------------------------------
def rate_run(seed: int, p: float, count: int) -> list[int]:
    fake = FakeProvider(seed=seed, script=[f"when:p={p}; status:code=500"], repeat_last=True)
    return statuses(fake, count)


def test_a_rate_fails_about_that_fraction_and_reproduces_from_the_seed() -> None:
    run = rate_run(7, 0.2, 1000)
    assert 150 <= run.count(500) <= 250  # the draws are fixed by the seed: this never flakes
    assert rate_run(7, 0.2, 1000) == run
    assert rate_run(8, 0.2, 1000) != run
    assert set(rate_run(7, 0.0, 50)) == {200}
    assert set(rate_run(7, 1.0, 50)) == {500}


def test_a_rate_in_the_header_draws_for_the_requests_carrying_it() -> None:
    header = "when:p=0.5; status:code=503"
    first = statuses(FakeProvider(seed=3), 40, header)
    again = FakeProvider(seed=3)
    assert [send(again).status for _ in range(5)] == [200] * 5  # others do not use up draws
    assert statuses(again, 40, header) == first
    assert 10 <= first.count(503) <= 30


@given(st.integers(0, 2**32), st.floats(0, 1), st.lists(st.booleans(), max_size=30))
def test_rates_reproduce_exactly_from_the_seed(seed: int, p: float, marked: list[bool]) -> None:
    """Two fakes with the same seed given the same requests answer them the same, whatever mix
    of requests carries the gate."""
    header = f"when:p={p}; status:code=500"

    def run() -> list[int]:
        fake = FakeProvider(seed=seed)
        return [send(fake, header=header if m else None).status for m in marked]

    first = run()
    assert run() == first
    assert all(s == 200 for s, m in zip(first, marked, strict=True) if not m)


@given(st.integers(0, 2**32), st.floats(0, 1), st.integers(0, 5), st.integers(0, 3))
def test_a_gate_hits_at_most_times_and_never_the_skipped(
    seed: int, p: float, times: int, skip: int
) -> None:
    fake = FakeProvider(seed=seed)
    run = statuses(fake, 20, f"when:p={p},times={times},skip={skip}; status:code=500")
    assert run[:skip] == [200] * skip
    assert run.count(500) <= times
    if p == 1.0:
        assert run[skip:] == [500] * min(times, 20 - skip) + [200] * (20 - skip - times)


# -- down for a time window --------------------------------------------------------------------
def test_a_window_fails_from_start_to_end_since_the_fake_started() -> None:
    clock = Clock(500.0)
    fake = FakeProvider(clock=clock, script=["when:start=10,end=70; status:code=503"], cycle=True)
    seen = []
    for t in (0, 9.99, 10, 40, 69.99, 70, 100):
        clock.now = 500.0 + t
        seen.append(send(fake).status)
    assert seen == [200, 200, 503, 503, 503, 200, 200]
    clock.now = 1_000.0
    fake.reset()  # the window starts again
    clock.now = 1_010.0
    assert send(fake).status == 503


def test_a_window_can_count_from_the_first_request() -> None:
    clock = Clock(0.0)
    fake = FakeProvider(clock=clock)
    header = "when:end=60,since=first; status:code=500"
    clock.now = 1_000.0  # long after the fake started
    assert send(fake, header=header).status == 500
    clock.now = 1_059.0
    assert send(fake, header=header).status == 500
    clock.now = 1_060.0
    assert send(fake, header=header).status == 200


# -- context length and content filters --------------------------------------------------------
def test_context_length_exceeded_has_openais_shape() -> None:
    reply = send(FakeProvider(), header="context_length_exceeded")
    assert reply.status == 400
    error = json.loads(reply.body)["error"]
    assert error == {
        "message": "This model's maximum context length is 8192 tokens. However, your messages "
        "resulted in 8193 tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
    asked = send(FakeProvider(), {**BODY, "max_tokens": 100}, "context_length_exceeded")
    assert json.loads(asked.body)["error"]["message"] == (
        "This model's maximum context length is 8192 tokens. However, you requested 8193 tokens "
        "(5 in the messages, 8188 in the completion). Please reduce the length of the messages "
        "or completion."
    )
    other = send(FakeProvider(), header="context_length_exceeded:message=prompt is too long")
    assert json.loads(other.body)["error"]["message"] == "prompt is too long"


def test_a_model_with_an_enforced_window_refuses_a_prompt_that_does_not_fit() -> None:
    tiny = FakeModel(id="tiny", context_length=20, enforce_context=True)
    fake = FakeProvider(models=(tiny,))
    fits = {"model": "tiny", "messages": [{"role": "user", "content": "a " * 10}]}
    assert send(fake, fits).status == 200  # 13 prompt tokens
    assert send(fake, {**fits, "max_tokens": 7}).status == 200  # 20: exactly the window
    over = send(fake, {**fits, "max_tokens": 8})
    assert over.status == 400
    error = json.loads(over.body)["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert "requested 21 tokens (13 in the messages, 8 in the completion)" in error["message"]
    long = {"model": "tiny", "messages": [{"role": "user", "content": "a " * 30}]}
    assert (
        "your messages resulted in 33 tokens"
        in json.loads(send(fake, long).body)["error"]["message"]
    )
    assert len(fake.requests) == 4  # still recorded, and no script step is needed


def test_content_filter_errors_have_openais_and_azures_shapes() -> None:
    openai = send(FakeProvider(), header="content_filter")
    assert openai.status == 400
    error = json.loads(openai.body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "content_policy_violation")
    azure = json.loads(send(FakeProvider(), header="content_filter:code=content_filter").body)
    assert azure["error"]["code"] == "content_filter"
    assert azure["error"]["param"] == "prompt"
    assert azure["error"]["innererror"]["code"] == "ResponsibleAIPolicyViolation"


def test_an_output_filter_stops_the_reply_with_finish_reason_content_filter() -> None:
    reply = send(FakeProvider(), header="content_filter:after=2")
    answer = json.loads(reply.body)
    assert reply.status == 200
    assert answer["choices"][0]["finish_reason"] == "content_filter"
    assert len(answer["choices"][0]["message"]["content"].split()) == 2
    assert answer["usage"]["completion_tokens"] == 2
    events = data_of(send(FakeProvider(), STREAM, "content_filter:after=3"))
    finishes = [c["finish_reason"] for e in events[:-1] for c in e["choices"]]
    assert finishes[-1] == "content_filter"
    assert len(text_of(events).split()) == 3
    assert events[-1] == "[DONE]"


# -- stalls and cuts ---------------------------------------------------------------------------
def test_a_stall_holds_the_stream_after_n_events_forever() -> None:
    normal = send(FakeProvider(), STREAM)
    stalled = send(FakeProvider(), STREAM, "stall:events=2")
    assert stalled.body == normal.body
    assert stalled.delays[2] is None
    assert [d for i, d in enumerate(stalled.delays) if i != 2] == [0.0] * (len(stalled.chunks) - 1)
    assert b"".join(stalled.chunks[:2]).count(b"data: ") == 2


def test_a_stall_falls_between_chunks_whatever_the_chunking() -> None:
    normal = send(FakeProvider(), STREAM)
    reply = send(FakeProvider(), STREAM, "stall:events=3,seconds=2.5; chunking:size=7")
    assert reply.body == normal.body
    index = reply.delays.index(2.5)
    assert b"".join(reply.chunks[:index]).count(b"\n\n") == 3
    assert b"".join(reply.chunks[:index]).endswith(b"\n\n")


def test_a_stall_after_the_last_event_holds_the_close() -> None:
    reply = send(FakeProvider(), STREAM, "truncate:events=4; stall:events=4")
    assert reply.chunks[-1] == b""
    assert reply.delays[-1] is None
    assert b"".join(reply.chunks).count(b"data: ") == 4


def test_a_stall_is_a_read_timeout_once_the_stream_has_begun() -> None:
    fake = FakeProvider(script=["stall:events=3"])
    client = httpx.Client(transport=FakeTransport(fake), base_url="http://fake/v1")
    got: list[bytes] = []
    with client, client.stream("POST", "/chat/completions", json=STREAM, timeout=0.05) as r:
        assert r.status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            got.extend(r.iter_raw())
    assert b"".join(got).count(b"data: ") == 3


@pytest.mark.parametrize("tokens", [0, 1, 3, 12, 50])
def test_a_cut_after_n_tokens(tokens: int) -> None:
    reply = send(FakeProvider(), STREAM, f"cut:tokens={tokens}")
    assert reply.cut
    events = data_of(reply)
    assert len(text_of(events).split()) == min(tokens, 12)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["finish_reason"] is None for e in events for c in e["choices"])
    assert reply.body.endswith(b"\n\n")  # after a whole event


def test_a_cut_after_n_tokens_and_some_bytes_breaks_off_inside_the_next_event() -> None:
    whole = send(FakeProvider(), STREAM, "cut:tokens=2")
    more = send(FakeProvider(), STREAM, "cut:tokens=2,bytes=9")
    assert more.body == send(FakeProvider(), STREAM).body[: len(whole.body) + 9]


def test_a_cut_after_n_tokens_counts_every_choice() -> None:
    reply = send(FakeProvider(), {**STREAM, "n": 2}, "cut:tokens=3")
    contents = [
        c["delta"]["content"]
        for e in data_of(reply)
        for c in e["choices"]
        if c["delta"].get("content")
    ]
    assert len(contents) == 3


# -- complete streams without [DONE] -----------------------------------------------------------
def test_no_done_ends_after_the_finish_and_the_usage() -> None:
    events = data_of(send(FakeProvider(), STREAM, "no_done"))
    assert "[DONE]" not in events
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] == 12
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    plain = data_of(send(FakeProvider(), {**BODY, "stream": True}, "no_done"))
    assert plain[-1]["choices"][0]["finish_reason"] == "stop"


# -- prefill -----------------------------------------------------------------------------------
PREFILLED = [*HELLO, {"role": "assistant", "content": "Once upon a"}]


def words_of(fake: FakeProvider, body: dict[str, Any], count: int) -> list[str]:
    return reply_words(fake.config.seed, 0, 0, json.dumps(body).encode(), count)


def test_a_model_that_honours_a_prefill_continues_it() -> None:
    model = FakeModel(id="cont", prefill="honour")
    body = {"model": "cont", "messages": PREFILLED}
    fake = FakeProvider(models=(model,))
    answer = json.loads(send(fake, body).body)
    content = answer["choices"][0]["message"]["content"]
    assert content == " " + " ".join(words_of(fake, body, 12)[3:])
    assert len(("Once upon a" + content).split()) == 12  # the whole answer is 12 words long
    assert answer["usage"]["completion_tokens"] == 9
    streamed = {**body, "stream": True}
    events = data_of(send(FakeProvider(models=(model,)), streamed))
    assert text_of(events) == " " + " ".join(words_of(fake, streamed, 12)[3:])


def test_a_prefill_ending_in_a_space_is_continued_without_one() -> None:
    fake = FakeProvider(script=["prefill"])
    body = {**BODY, "messages": [*HELLO, {"role": "assistant", "content": "Sure: "}]}
    content = json.loads(send(fake, body).body)["choices"][0]["message"]["content"]
    assert not content.startswith(" ")
    assert len(content.split()) == 11


def test_a_model_that_rejects_a_prefill_answers_400() -> None:
    model = FakeModel(id="strict", prefill="reject")
    fake = FakeProvider(models=(model,))
    reply = send(fake, {"model": "strict", "messages": PREFILLED})
    assert reply.status == 400
    error = json.loads(reply.body)["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "prefill_not_supported",
        "messages",
    )
    assert "prefill" in error["message"]
    assert send(fake, {"model": "strict", "messages": HELLO}).status == 200
    assert (
        send(fake, {"model": "strict", "messages": PREFILLED}, "prefill:mode=honour").status == 200
    )


def test_by_default_a_prefill_is_ignored() -> None:
    fake = FakeProvider()
    body = {**BODY, "messages": PREFILLED}
    content = json.loads(send(fake, body).body)["choices"][0]["message"]["content"]
    assert content == " ".join(words_of(fake, body, 12))
    assert send(FakeProvider(), body, "prefill:mode=reject").status == 400


# -- the strategies ----------------------------------------------------------------------------
@given(behaviours(["when", "stall", "context_length_exceeded", "content_filter", "prefill"]))
def test_the_new_faults_are_drawn_and_accepted(behaviour: Behaviour) -> None:
    fake = FakeProvider(script=[[behaviour]])
    reply = send(fake, STREAM)
    assert reply.status in (200, 400)
    assert all(d is not None for d in reply.delays)  # never a stall forever from the strategies
    if isinstance(behaviour, When):
        assert fake.requests[0].behaviours == ()


@pytest.mark.parametrize(
    ("style", "words"),
    [
        ("anthropic", r"^prompt is too long: 8193 tokens > 8192 maximum$"),
        ("gemini", r"^The input token count \(8193\) exceeds the maximum number of tokens"),
        ("mistral", r"too large for model with 8192 maximum context length$"),
        ("openrouter", r"^This endpoint's maximum context length is 8192 tokens\. However"),
        ("vllm", r"you requested 8193 tokens \(5 in the messages, 8188 in the completion\)"),
        ("llamacpp", r"exceeds the available context size"),
    ],
)
def test_context_length_exceeded_in_other_providers_words(style: str, words: str) -> None:
    reply = send(FakeProvider(), header=f"context_length_exceeded:style={style}")
    assert reply.status == 400
    error = json.loads(reply.body)["error"]
    assert re.search(words, error["message"])
    assert error["code"] is None  # only the words say it


@given(
    st.floats(0, 100),
    st.floats(0, 100),
    st.lists(st.floats(0, 200), max_size=12),
    st.sampled_from(["start", "first"]),
)
@example(start=1.0, end=2.0, times=[0.0, 1.0], since="first")  # a first request at time 0
def test_a_window_hits_exactly_the_requests_inside_it(
    start: float, end: float, times: list[float], since: str
) -> None:
    """Requests arrive at ``times`` (seconds after the fake started, in order): each inside
    ``[start, end)`` counted from the fake's start or its first request fails, and only those."""
    times = sorted(times)
    clock = Clock(0.0)
    fake = FakeProvider(clock=clock)
    header = f"when:start={start},end={end},since={since}; status:code=503"
    seen = []
    for t in times:
        clock.now = t
        seen.append(send(fake, header=header).status)
    origin = 0.0 if since == "start" or not times else times[0]
    assert seen == [503 if start <= t - origin < end else 200 for t in times]


@given(behaviours(), st.integers(0, 2**32))
def test_a_gate_that_lets_a_request_through_changes_nothing_else(
    behaviour: Behaviour, seed: int
) -> None:
    if isinstance(behaviour, When):
        return
    now = 1_700_000_000.0  # (one clock for both: rate-limit resets are times on it)
    plain = FakeProvider(seed=seed, script=[[behaviour]], clock=lambda: now)
    gated = FakeProvider(seed=seed, script=[[When(times=1), behaviour]], clock=lambda: now)
    assert send(gated, STREAM) == send(plain, STREAM)
    assert gated.requests[0].behaviours == plain.requests[0].behaviours
