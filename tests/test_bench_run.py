"""benchmarks/run.py's arithmetic (the CPU clock it reads, the round-by-round ratios) and its
workloads (the upstream's bytes in each dialect, the client's requests and checks)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # (dataclasses look their module up)
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["bench_run"]
    return module


@pytest.mark.skipif(sys.platform != "linux", reason="the process CPU clock is Linux's")
def test_the_cpu_clock_of_a_process_is_read_to_the_nanosecond(run: ModuleType) -> None:
    assert run.PRECISE_CPU
    before, mine_before = run.cpu_seconds(os.getpid()), time.process_time()
    while time.process_time() - mine_before < 0.02:  # burn a little CPU
        pass
    after, mine_after = run.cpu_seconds(os.getpid()), time.process_time()
    # the same clock as the process's own, read from outside: no 10 ms ticks
    assert after - before == pytest.approx(mine_after - mine_before, abs=0.002)


def cell(run: ModuleType, rounds: list[tuple[int, float, float]]) -> object:
    c = run.Cell()
    for requests, seconds, cpu in rounds:
        c.requests += requests
        c.seconds += seconds
        c.cpu += cpu
        c.rounds.append((requests, seconds, cpu))
    return c


def test_round_ratios_pair_each_round_with_the_passthroughs(run: ModuleType) -> None:
    cells = {
        # the passthrough: 0.1 s of CPU per 100 requests, then a round the machine slowed
        ("aiohttp", "stream", 32): cell(run, [(100, 1.0, 0.1), (100, 1.0, 0.1), (100, 2.0, 0.4)]),
        # the router: twice the passthrough's CPU in every round, half its rate
        ("router", "stream", 32): cell(run, [(100, 2.0, 0.2), (100, 2.0, 0.2), (100, 4.0, 0.8)]),
        ("serve", "stream", 32): cell(run, [(100, 1.0, 0.1), (100, 1.0, 0.3), (100, 1.0, 0.2)]),
    }
    text = run.round_ratios(cells)
    cpu_part, rate_part = text.split("req/s ×")
    lines = {line.split("|")[1].strip(): line for line in cpu_part.splitlines() if "|" in line}
    assert "2.00 (2.00-2.00)" in lines["router"]
    assert "1.00 (0.50-3.00)" in lines["serve"]  # ratios 1, 3, 0.5: the median is the middle
    # only the workload measured has columns; its other concurrency had no rounds: no ratio
    columns = [c.strip() for c in cpu_part.splitlines()[1].split("|")[1:-1]]
    assert columns == ["proxy", "stream c=1", "stream c=32"]
    assert lines["router"].count(" - ") == 1
    assert "httpx" not in lines  # not measured: no row
    rates = {line.split("|")[1].strip(): line for line in rate_part.splitlines() if "|" in line}
    assert "0.50 (0.50-0.50)" in rates["router"]
    assert "1.00 (1.00-2.00)" in rates["serve"]


def test_the_shared_store_rows_are_also_given_against_the_sqlite_router(run: ModuleType) -> None:
    cells = {
        ("router+sqlite", "json", 32): cell(
            run, [(100, 1.0, 0.2), (100, 1.0, 0.2), (100, 1.0, 0.4)]
        ),
        # the PostgreSQL ledger: 10 % more CPU a request in two rounds, less in a third
        ("router+pg", "json", 32): cell(run, [(100, 1.0, 0.22), (200, 1.0, 0.44), (100, 1.0, 0.2)]),
    }
    text = run.ratios_to_sqlite(cells)
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if "|" in line}
    assert "1.10 (0.50-1.10)" in lines["router+pg"]
    assert "router+redis+pg" not in lines  # not measured: no row
    assert run.ratios_to_sqlite({}) == ""


def test_the_redis_row_is_a_shared_store_row(run: ModuleType) -> None:
    assert "router+redis" in run.PROXIES
    cells = {
        ("router+sqlite", "stream", 1): cell(run, [(100, 1.0, 0.2), (100, 1.0, 0.2)]),
        ("router+redis", "stream", 1): cell(run, [(100, 1.0, 0.21), (100, 1.0, 0.23)]),
    }
    lines = {
        line.split("|")[1].strip(): line
        for line in run.ratios_to_sqlite(cells).splitlines()
        if "|" in line
    }
    assert "1.10 (1.05-1.15)" in lines["router+redis"]


def test_the_observability_rows_are_given_against_the_router(run: ModuleType) -> None:
    assert {"router+metrics", "router+otel"} <= set(run.PROXIES)
    cells = {
        ("router", "json", 32): cell(run, [(100, 1.0, 0.2), (100, 1.0, 0.2)]),
        # metrics on: 2 % and 4 % more CPU a request; OpenTelemetry: 10 % in both rounds
        ("router+metrics", "json", 32): cell(run, [(100, 1.0, 0.204), (100, 1.0, 0.208)]),
        ("router+otel", "json", 32): cell(run, [(100, 1.0, 0.22), (200, 1.0, 0.44)]),
        ("router+sqlite", "json", 32): cell(run, [(100, 1.0, 0.4), (100, 1.0, 0.4)]),
    }
    text = run.ratios_to_router(cells)
    assert text.startswith("CPU/req ÷ router,")
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if "|" in line}
    assert "1.03 (1.02-1.04)" in lines["router+metrics"]
    assert "1.10 (1.10-1.10)" in lines["router+otel"]
    assert "router+sqlite" not in lines  # not an observability row
    assert run.ratios_to_router({}) == ""


def test_the_observability_rows_turn_their_part_on(run: ModuleType) -> None:
    app = run.router_app("http://127.0.0.1:9", None, observed={"tracing": {"enabled": True}})
    assert app.tracing is not None
    metrics = run.router_app("http://127.0.0.1:9", None, observed={"metrics": {"enabled": True}})
    assert metrics.metrics is not None


def events_of(response: bytes) -> list[bytes]:
    """The SSE events of a whole chunked HTTP/1.1 response, one chunk each."""
    head, chunked = response.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding: chunked" in head
    assert b"content-type: text/event-stream" in head
    events = []
    while (size := int(chunked.split(b"\r\n", 1)[0], 16)) > 0:
        chunked = chunked.split(b"\r\n", 1)[1]
        events.append(chunked[:size])
        chunked = chunked[size + 2 :]
    assert chunked == b"0\r\n\r\n"
    return events


def test_every_stream_carries_the_same_words_in_its_dialects_shape(run: ModuleType) -> None:
    payloads = run.upstream_payloads()
    assert set(payloads) == set(run.WORKLOADS)
    assert payloads["json"].startswith(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
    words = {}
    for workload in run.STREAMS:
        events = events_of(payloads[workload])
        assert all(e.endswith(b"\n\n") and e.count(b"\n\n") == 1 for e in events)
        if workload == "stream":
            assert len(events) == run.STREAM_EVENTS
            assert events[-1] == b"data: [DONE]\n\n"
            chunks = [json.loads(e[6:]) for e in events[:-1]]
            assert chunks[-1]["usage"]["completion_tokens"] == run.CONTENT_EVENTS
            text = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
            words[workload] = "".join(t for t in text if t)
            continue
        named = [
            (e.split(b"\n")[0][7:].decode(), json.loads(e.split(b"\ndata: ")[1])) for e in events
        ]
        assert all(name == data["type"] for name, data in named)
        names = [name for name, _ in named]
        if workload == "stream-responses":
            assert names[0] == "response.created"
            assert names[-1] == "response.completed"
            assert named[-1][1]["response"]["usage"]["output_tokens"] == run.CONTENT_EVENTS
            deltas = [d["delta"] for n, d in named if n == "response.output_text.delta"]
        else:
            assert names[:3] == ["message_start", "content_block_start", "ping"]
            assert names[-2:] == ["message_delta", "message_stop"]
            assert named[-2][1]["usage"]["output_tokens"] == run.CONTENT_EVENTS
            deltas = [d["delta"]["text"] for n, d in named if n == "content_block_delta"]
        assert len(deltas) == run.CONTENT_EVENTS
        words[workload] = "".join(deltas)
    # an answer of as many words in every dialect (the fakes pick them by the request)
    assert {len(text.split(" ")) for text in words.values()} == {run.CONTENT_EVENTS}


def test_the_upstream_answers_each_request_with_its_workloads_bytes(run: ModuleType) -> None:
    responses = {w: w.encode() for w in run.WORKLOADS}
    written: list[bytes] = []

    class Transport(asyncio.Transport):
        def write(self, data: bytes | bytearray | memoryview) -> None:
            written.append(bytes(data))

    upstream = run.UpstreamProtocol(responses)
    upstream.connection_made(Transport())
    requests = b""
    for workload in ("json", "stream", "stream-responses", "stream-messages", "json"):
        body = json.loads(run.request_body(workload))
        body["model"] = "fake-small"  # (what the router sends: its own JSON)
        data = json.dumps(body, separators=(",", ":")).encode()
        requests += (
            f"POST {run.PATHS[workload]} HTTP/1.1\r\nhost: up\r\n"
            f"content-length: {len(data)}\r\n\r\n"
        ).encode() + data
    requests += b"POST /v1/embeddings HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}"
    upstream.data_received(requests[:100])  # (a request arrives in pieces)
    upstream.data_received(requests[100:])
    assert written == [
        b"json",
        b"stream",
        b"stream-responses",
        b"stream-messages",
        b"json",
        run.NOT_FOUND,
    ]
    assert upstream.buffer == bytearray()


def test_each_workloads_client_speaks_its_dialect(run: ModuleType) -> None:
    assert run.PATHS["stream-responses"] == "/v1/responses"
    assert run.PATHS["stream-messages"] == "/v1/messages"
    responses = json.loads(run.request_body("stream-responses"))
    assert responses == {"model": "bench", "input": "Say something short.", "stream": True}
    messages = json.loads(run.request_body("stream-messages"))
    assert messages["max_tokens"] > 0
    assert messages["stream"] is True
    assert json.loads(run.request_body("json"))["stream"] is False
    headers = run.request_headers("stream-messages")
    assert headers["x-api-key"] == run.CLIENT_KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers
    assert run.request_headers("stream-responses")["authorization"] == f"Bearer {run.CLIENT_KEY}"


def test_an_answer_is_whole_when_its_dialects_terminal_event_ends_it(run: ModuleType) -> None:
    payloads = run.upstream_payloads()
    for workload in run.WORKLOADS:
        body = payloads[workload].split(b"\r\n\r\n", 1)[1]
        whole = body if workload == "json" else b"".join(events_of(payloads[workload]))
        assert run.whole(workload, whole)
        if workload != "json":
            assert not run.whole(workload, whole.rsplit(b"\n\n", 2)[0] + b"\n\n")  # cut
            assert not run.whole(workload, whole[:-1])
    assert not run.whole("stream-messages", b"event: error\ndata: {}\n\n")
    assert not run.whole("json", b'{"error": {}}')


def test_the_dialects_streams_are_compared_with_chats_round_by_round(run: ModuleType) -> None:
    cells = {
        ("aiohttp", "stream", 1): cell(run, [(100, 1.0, 0.1), (100, 1.0, 0.2)]),
        ("router", "stream", 1): cell(run, [(100, 1.0, 0.2), (100, 1.0, 0.4)]),  # 2x, 2x
        ("aiohttp", "stream-messages", 1): cell(run, [(100, 1.0, 0.1), (100, 1.0, 0.1)]),
        # 2.2x in the first round (1.10 of chat's), 1.8x in the second (0.90)
        ("router", "stream-messages", 1): cell(run, [(100, 1.0, 0.22), (100, 1.0, 0.18)]),
    }
    text = run.dialect_ratios(cells)
    header, _, row = text.splitlines()[1:4]
    assert [c.strip() for c in header.split("|")[1:-1]] == [
        "proxy",
        "conc",
        "stream ×",
        "stream-messages ×",
        "stream-messages ÷ chat",
    ]
    assert [c.strip() for c in row.split("|")[1:-1]] == [
        "router",
        "1",
        "2.00 (2.00-2.00)",
        "2.00 (1.80-2.20)",
        "1.00 (0.90-1.10)",
    ]
    assert len(text.splitlines()) == 4  # no other proxy or concurrency measured: no row
    assert run.dialect_ratios({k: v for k, v in cells.items() if k[1] == "stream"}) == ""
