"""Every request ends as exactly one ledger record with a terminal status, tokens and exact cost;
the observer taps streams without changing what the client receives."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from typing import Any

import anyio
import pytest
from asgi_helpers import call, sse_data
from hypothesis import given, settings
from hypothesis import strategies as st

from waterfall_asgi import TERMINAL_STATUSES, MemoryLedger, UsageRecord, WaterfallMiddleware
from waterfall_asgi.middleware import with_usage
from waterfall_fakes import FakeNetwork, FakeProvider

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "count my tokens please"}]  # 3 + 4 prompt tokens
CHAT = {"model": "fast", "messages": MESSAGES}
STREAM = {**CHAT, "stream": True}
PRICES = {
    "a": {"unit": "msat", "prompt": "0.15", "completion": "0.6", "request": "1"},
    "b": {"unit": "msat", "prompt": "2.5", "completion": "10"},
}


def make(
    scripts: dict[str, list[str]] | None = None,
    *,
    fakes: dict[str, Any] | None = None,
    **extra: Any,
) -> tuple[WaterfallMiddleware, FakeNetwork, MemoryLedger]:
    scripts = scripts or {}
    net = FakeNetwork(
        {h: FakeProvider(name=h, script=scripts.get(h, []), **(fakes or {})) for h in "ab"}
    )
    ledger = MemoryLedger()
    config: dict[str, Any] = {
        "providers": {
            h: {"base_url": f"http://{h}/v1", "timeouts": {"first_byte": 0.3, "read": 0.3}}
            for h in "ab"
        },
        "deployments": [
            {"provider": h, "model": f"fake-{size}", "price": PRICES[h]}
            for h, size in (("a", "small"), ("b", "medium"))
        ],
        "chains": {"fast": ["a/fake-small", "b/fake-medium"]},
        **extra,
    }
    return WaterfallMiddleware(None, config, transport=net, ledger=ledger), net, ledger


def only(ledger: MemoryLedger) -> UsageRecord:
    (record,) = ledger.records.values()
    return record


# -- usage injection --------------------------------------------------------------------------
def test_with_usage_keeps_the_clients_choice_and_never_mutates() -> None:
    request = {"stream": True, "stream_options": {"other": 1}}
    sent, injected = with_usage(request)
    assert sent["stream_options"] == {"other": 1, "include_usage": True}
    assert injected
    assert request == {"stream": True, "stream_options": {"other": 1}}
    for value in (True, False):
        chosen = {"stream": True, "stream_options": {"include_usage": value}}
        assert with_usage(chosen) == (chosen, False)


async def test_injected_usage_is_recorded_and_its_chunk_removed_from_the_client() -> None:
    app, net, ledger = make()
    result = await call(app, "POST", "/v1/chat/completions", STREAM)
    upstream = net["a"].calls()[0]
    assert upstream.json["stream_options"] == {"include_usage": True}
    # the client sees exactly the stream it would have seen had nobody asked for usage
    data = sse_data(result.body)
    assert not any(json.loads(d).get("choices") == [] for d in data[:-1])
    assert data[-1] == "[DONE]"
    record = only(ledger)
    assert (record.status, record.prompt_tokens, record.completion_tokens) == ("success", 7, 12)
    # 7 x 0.15 + 12 x 0.6 + 1 = 9.25 msat, rounded up once
    assert (record.cost, record.cost_unit) == (10, "msat")


async def test_a_client_that_asked_for_usage_gets_the_usage_chunk() -> None:
    app, _, ledger = make()
    asked = {**STREAM, "stream_options": {"include_usage": True}}
    result = await call(app, "POST", "/v1/chat/completions", asked)
    usage = json.loads(sse_data(result.body)[-2])
    assert usage["choices"] == []
    assert usage["usage"]["total_tokens"] == 19
    assert only(ledger).total_tokens == 19


async def test_a_client_that_refused_usage_is_respected() -> None:
    app, net, ledger = make()
    refused = {**STREAM, "stream_options": {"include_usage": False}}
    await call(app, "POST", "/v1/chat/completions", refused)
    assert net["a"].calls()[0].json["stream_options"] == {"include_usage": False}
    record = only(ledger)
    assert (record.status, record.total_tokens, record.cost) == ("success", None, None)


async def test_the_stream_is_relayed_byte_for_byte_apart_from_the_injected_chunk() -> None:
    behaviour = "chunking:size=7; line_endings:style=crlf; keepalive:every=3; fields"
    app, _, ledger = make({"a": [behaviour]})
    asked = {**STREAM, "stream_options": {"include_usage": True}}
    result = await call(app, "POST", "/v1/chat/completions", asked)
    reference = FakeProvider(name="a", script=[behaviour]).handle(
        "POST", "/v1/chat/completions", {}, json.dumps({**asked, "model": "fake-small"}).encode()
    )
    assert result.body == reference.body
    assert only(ledger).status == "success"


# -- statuses ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("behaviour", "status", "tokens"),
    [
        ("ok", "success", 19),
        ("no_done", "success", 19),  # a whole answer: the router appends the [DONE]
        ("no_done; no_usage", "stream_incomplete", None),  # usage asked for, never came
        ("truncate:events=5", "stream_incomplete", None),
        ("cut:bytes=1500", "upstream_error", None),
        ("error_event:after=3", "upstream_error", None),
        ("error_event:after=3,done=true", "upstream_error", None),
        ("no_usage", "success", None),
        ("slow_chunks:seconds=5", "stream_incomplete", None),  # stalled
    ],
)
async def test_stream_statuses(behaviour: str, status: str, tokens: int | None) -> None:
    app, _, ledger = make({"a": [behaviour]})
    result = await call(app, "POST", "/v1/chat/completions", STREAM)
    record = only(ledger)
    assert (record.status, record.total_tokens) == (status, tokens)
    assert record.http_status == 200
    assert (record.provider, record.upstream_model, record.stream) == ("a", "fake-small", True)
    assert record.ttfb_ms is not None
    assert record.duration_ms is not None
    assert record.ttfb_ms <= record.duration_ms
    assert (record.error is None) == (status == "success" and behaviour != "no_done")
    if behaviour == "no_done":
        assert record.error == "upstream sent no [DONE]"
        assert sse_data(result.body)[-1] == "[DONE]"
    if status != "success":
        assert any('"error"' in d for d in sse_data(result.body))


async def test_json_requests_read_usage_from_the_body() -> None:
    app, _, ledger = make({"a": ["rate_limit"]})
    await call(app, "POST", "/v1/chat/completions", CHAT)
    record = only(ledger)
    assert (record.status, record.provider, record.total_tokens) == ("success", "b", 19)
    assert (record.cost, record.cost_unit) == (138, "msat")  # 7 x 2.5 + 12 x 10 = 137.5
    assert [a["outcome"] for a in record.attempts] == ["status", "served"]


@pytest.mark.parametrize(
    ("scripts", "body", "status", "http"),
    [
        ({"a": ["status:code=503"] * 2, "b": ["rate_limit"]}, CHAT, "exhausted", 503),
        ({}, {"model": "nope", "messages": MESSAGES}, "rejected", 404),
        ({}, {"model": "fast"}, "rejected", 400),
        ({"a": ["status:code=400"]}, CHAT, "rejected", 400),
    ],
)
async def test_requests_the_router_does_not_serve_are_recorded_too(
    scripts: dict[str, list[str]], body: dict[str, Any], status: str, http: int
) -> None:
    app, _, ledger = make(scripts)
    await call(app, "POST", "/v1/chat/completions", body)
    record = only(ledger)
    assert (record.status, record.http_status) == (status, http)
    assert record.error


async def test_models_and_health_are_not_usage() -> None:
    app, _, ledger = make()
    await call(app, "GET", "/v1/models")
    await call(app, "GET", "/health")
    assert ledger.records == {}


# -- disconnects and drains -------------------------------------------------------------------
async def test_a_client_that_leaves_mid_stream_is_recorded_with_usage_after_a_drain() -> None:
    app, _, ledger = make({"a": ["slow_chunks:seconds=0.01"]})
    gone = asyncio.Event()
    task = asyncio.ensure_future(call(app, "POST", "/v1/chat/completions", STREAM, disconnect=gone))
    for _ in range(2000):  # until the first bytes reach the client (bounded)
        if ledger.records:
            break
        await asyncio.sleep(0.001)
    gone.set()
    with anyio.fail_after(5):
        await task
    record = only(ledger)
    assert record.status == "client_disconnected"
    assert record.total_tokens == 19  # drained to the end: usage is still known
    assert record.cost == 10


async def test_the_drain_is_bounded() -> None:
    app, _, ledger = make({"a": ["slow_chunks:seconds=0.2"]}, ledger={"drain_seconds": 0.05})
    gone = asyncio.Event()
    task = asyncio.ensure_future(call(app, "POST", "/v1/chat/completions", STREAM, disconnect=gone))
    for _ in range(2000):
        if ledger.records:
            break
        await asyncio.sleep(0.001)
    gone.set()
    with anyio.fail_after(5):
        await task
    record = only(ledger)
    assert (record.status, record.total_tokens) == ("client_disconnected", None)


async def test_a_client_gone_before_any_answer_is_recorded() -> None:
    app, _, ledger = make({"a": ["hang"]})
    gone = asyncio.Event()
    task = asyncio.ensure_future(call(app, "POST", "/v1/chat/completions", CHAT, disconnect=gone))
    await asyncio.sleep(0.02)
    gone.set()
    with anyio.fail_after(5):
        await task
    assert only(ledger).status == "client_disconnected"


async def test_cancellation_still_leaves_a_terminal_record() -> None:
    app, _, ledger = make({"a": ["slow_chunks:seconds=1"]})
    task = asyncio.ensure_future(call(app, "POST", "/v1/chat/completions", STREAM))
    for _ in range(2000):
        if ledger.records:
            break
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert only(ledger).status == "interrupted"


# -- hooks and the cost event -----------------------------------------------------------------
async def test_on_complete_gets_every_finished_record_and_its_errors_stay_inside() -> None:
    seen: list[UsageRecord] = []

    async def hook(record: UsageRecord) -> None:
        seen.append(record)
        raise RuntimeError("user code broke")

    app, _, _ = make()
    app.on_complete = hook
    result = await call(app, "POST", "/v1/chat/completions", CHAT)
    assert result.status == 200
    assert [r.status for r in seen] == ["success"]
    app.on_complete = seen.append  # a plain function works too
    await call(app, "POST", "/v1/chat/completions", {"model": "x", "messages": []})
    assert [r.status for r in seen] == ["success", "rejected"]


async def test_the_optional_cost_event_follows_done_and_is_never_a_second_done() -> None:
    app, _, _ = make(ledger={"path": None, "cost_event": True})
    result = await call(app, "POST", "/v1/chat/completions", STREAM)
    text = result.body.decode()
    assert text.count("data: [DONE]") == 1
    tail = text.split("data: [DONE]\n\n", 1)[1]
    assert tail.startswith("event: waterfall.cost\ndata: ")
    cost = json.loads(tail.split("data: ", 1)[1])
    assert (cost["cost"], cost["unit"]) == (10, "msat")


# -- the invariant ----------------------------------------------------------------------------
FAULTS = [
    "ok",
    "rate_limit",
    "status:code=500",
    "status:code=400",
    "truncate:events=0",
    "truncate:events=4",
    "no_done",
    "cut:bytes=40",
    "cut:bytes=1200",
    "error_event:after=0",
    "error_event:after=4",
    "no_usage",
]


@settings(deadline=None)
@given(
    requests=st.lists(
        st.tuples(
            st.sampled_from(FAULTS),
            st.sampled_from(FAULTS),
            st.booleans(),
            st.sampled_from(["stay", "leave", "cancel"]),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_one_terminal_record_per_request_whatever_happens(
    requests: list[tuple[str, str, bool, str]],
) -> None:
    async def run() -> None:
        app, _, ledger = make(
            {"a": [r[0] for r in requests], "b": [r[1] for r in requests]},
            ledger={"path": None, "drain_seconds": 0},
        )
        for _, _, stream, client in requests:
            body = STREAM if stream else CHAT
            gone = asyncio.Event()
            task = asyncio.ensure_future(
                call(app, "POST", "/v1/chat/completions", body, disconnect=gone)
            )
            if client != "stay":
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                if client == "leave":
                    gone.set()
                else:
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
        assert len(ledger.records) == len(requests)
        for record in ledger.records.values():
            assert record.status in TERMINAL_STATUSES
            if record.status == "success" and record.stream:  # [DONE], or appended to a whole
                assert record.error in (None, "upstream sent no [DONE]")
        await app.shutdown()

    asyncio.run(run())


async def test_no_cost_event_after_a_stream_that_reported_an_error() -> None:
    app, _, ledger = make(
        {"a": ["error_event:after=3,done=true"]}, ledger={"path": None, "cost_event": True}
    )
    result = await call(app, "POST", "/v1/chat/completions", STREAM)
    assert b"waterfall.cost" not in result.body
    assert only(ledger).status == "upstream_error"


def test_an_empty_ledger_path_keeps_usage_in_memory() -> None:
    config = {"providers": {"a": {"base_url": "http://a/v1"}}, "chains": {"c": ["a/m"]}}
    app = WaterfallMiddleware(None, {**config, "ledger": {"path": ""}})
    assert isinstance(app.ledger, MemoryLedger)


@pytest.mark.anyio
async def test_the_memory_ledger_keeps_the_latest_records_only() -> None:
    ledger = MemoryLedger(max_records=3)
    for n in range(5):
        await ledger.save(UsageRecord(id=f"r{n}", started_at=0.0, route="/v1/chat/completions"))
    await ledger.save(UsageRecord(id="r3", started_at=0.0, route="/v1/x", status="success"))
    assert list(ledger.records) == ["r2", "r3", "r4"]  # a save again keeps the place
    assert ledger.records["r3"].status == "success"
    assert len(MemoryLedger(max_records=None).records) == 0
    with pytest.raises(ValueError, match="max_records"):
        MemoryLedger(max_records=0)


PLAIN = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=6)
)


@given(
    fields=st.fixed_dictionaries(
        {
            "id": st.text(min_size=1, max_size=8),
            "started_at": st.floats(allow_nan=False),
            "route": st.text(max_size=8),
            "stream": st.booleans(),
            "status": st.sampled_from(["pending", *sorted(TERMINAL_STATUSES)]),
            "attempts": st.lists(st.dictionaries(st.text(max_size=6), PLAIN), max_size=4),
            "prompt_tokens": st.none() | st.integers(min_value=0),
            "error": st.none() | st.text(max_size=8),
        }
    )
)
def test_a_memory_ledger_reads_back_what_was_saved(fields: dict[str, Any]) -> None:
    record = UsageRecord(**fields)
    ledger = MemoryLedger()
    asyncio.run(ledger.save(record))
    kept = ledger.records[record.id]
    assert kept == record
    saved = record.to_dict()
    assert list(kept.to_dict().items()) == list(saved.items())  # the order too
    for attempt in record.attempts:  # a copy: later changes are not seen until saved again
        attempt["changed"] = True
    record.attempts.append({})
    record.status = "rejected"
    assert ledger.records[record.id].to_dict() == saved


async def test_what_the_memory_ledger_reads_out_is_a_copy_too() -> None:
    ledger = MemoryLedger()
    attempt = {"entry": "a/m", "outcome": "success", "status": 200}
    await ledger.save(UsageRecord(id="r", started_at=0.0, route="/v1/x", attempts=[attempt]))
    read = ledger.records["r"]
    read.status = "success"
    read.attempts[0]["status"] = 500
    assert ledger.records["r"].status == "pending"
    assert ledger.records["r"].attempts == [attempt]
    assert ledger.records == {
        "r": UsageRecord(id="r", started_at=0.0, route="/v1/x", attempts=[attempt])
    }
    with pytest.raises(TypeError):
        ledger.records["r"] = read  # type: ignore[index]


async def test_the_memory_ledger_marks_what_it_kept_pending_as_interrupted() -> None:
    ledger = MemoryLedger()
    await ledger.save(UsageRecord(id="p", started_at=0.0, route="/v1/x"))
    await ledger.save(UsageRecord(id="s", started_at=0.0, route="/v1/x", status="success"))
    await ledger.open()
    assert {r.id: r.status for r in ledger.records.values()} == {
        "p": "interrupted",
        "s": "success",
    }


async def test_the_collector_does_not_walk_what_the_memory_ledger_keeps() -> None:
    """Records kept are plain values: a full collection does not visit them again and again
    (10,000 kept records would be 50,000 objects on its lists)."""
    ledger = MemoryLedger(max_records=1000)
    attempts = [{"entry": "a/m", "outcome": "rate_limited", "status": 429, "cooldown_s": 2.5}]
    gc.collect()
    before = len(gc.get_objects())
    for n in range(2000):
        record = UsageRecord(id=f"r{n}", started_at=0.0, route="/v1/x", attempts=attempts * 2)
        await ledger.save(record)
    del record
    gc.collect()
    assert len(gc.get_objects()) - before < 100
    assert len(ledger.records) == 1000
