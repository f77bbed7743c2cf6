"""``waterfall-asgi demo``: the tour runs, prints every section, and says what the fakes did."""

from __future__ import annotations

import io
import re
import time
from contextlib import ExitStack

import httpx
import pytest

from waterfall_asgi import demo
from waterfall_asgi.cli import main
from waterfall_asgi.demo import (
    Exchange,
    Section,
    Table,
    api_verdict,
    header_hint,
    run,
    split_characters,
    tokens_in_out,
)


def parse_tables(output: str) -> dict[str, list[dict[str, str]]]:
    """Every table in the demo's output, keyed by its section title, rows as column -> cell."""
    tables: dict[str, list[dict[str, str]]] = {}
    lines = output.splitlines()
    title = ""
    for i, line in enumerate(lines):
        if re.match(r"^\d+\. ", line):
            title = line.split(". ", 1)[1]
        if i == 0 or "-" not in line or set(line) - {"-", " "}:
            continue
        # `line` is a dashes line: the one above holds the column names.
        spans = [m.span() for m in re.finditer(r"-+", line)]
        ends = [start for start, _ in spans[1:]] + [None]
        names = [
            lines[i - 1][start:end].strip() for (start, _), end in zip(spans, ends, strict=True)
        ]
        rows = []
        for row in lines[i + 1 :]:
            if not row:
                break
            rows.append(
                {
                    name: row[start:end].strip()
                    for name, (start, _), end in zip(names, spans, ends, strict=True)
                }
            )
        tables[title] = rows
    return tables


@pytest.mark.loopback
def test_the_demo_plays_every_section(capsys: pytest.CaptureFixture[str]) -> None:
    before_ms = int(time.time() * 1000)
    assert main(["demo"]) == 0
    after_ms = int(time.time() * 1000) + 1
    out = capsys.readouterr().out

    assert out.startswith(
        "waterfall-asgi demo: fake providers on 127.0.0.1, no network, no API keys."
    )
    assert out.rstrip().endswith("on a router's ledger for the same table any day.")
    tables = parse_tables(out)
    assert list(tables) == [s.title for s in demo.SECTIONS]
    storm, quota, streams, exact, router, cost, apis, usage = tables.values()
    assert out.count("millisatoshi") == 2  # the unit of sections 6 and 8, said in words

    # One 429 per header dialect, then a normal answer.
    assert [r["status"] for r in storm] == ["429"] * 6 + ["200"]
    assert [r["behaviour"] for r in storm] == [
        "rate_limit:seconds=2.0",
        "rate_limit:dialect=retry-after-date,seconds=2.0",
        "rate_limit:dialect=retry-after-ms,seconds=2.0",
        "rate_limit:dialect=openai,seconds=2.0",
        "rate_limit:dialect=openrouter,seconds=2.0",
        "rate_limit:dialect=none,seconds=2.0",
        "ok",
    ]
    hints = [r["when to retry"] for r in storm]
    assert hints[0] == "retry-after: 2"
    assert re.fullmatch(r"retry-after: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", hints[1])
    assert hints[2] == "retry-after-ms: 2000"
    assert hints[3] == "x-ratelimit-reset-requests: 2s, x-ratelimit-reset-tokens: 2s"
    reset_ms = int(hints[4].removeprefix("x-ratelimit-reset: "))
    assert before_ms + 2000 <= reset_ms <= after_ms + 2000
    assert hints[5:] == ["-", "-"]
    assert [r["usage"] for r in storm] == ["-"] * 6 + ["7+4=11"]
    assert {r["fake"] for r in storm} == {"storm"}

    # The limiter lets two requests through and refuses the third.
    assert [r["status"] for r in quota] == ["200", "200", "429"]
    said = [r["what the limiter says"] for r in quota]
    assert said[0] == "x-ratelimit-remaining-requests: 1, x-ratelimit-reset-requests: 1m0s"
    for line in said[1:]:
        assert re.fullmatch(
            r"x-ratelimit-remaining-requests: 0, x-ratelimit-reset-requests: (59\.\d+s|1m0s)", line
        )
    assert [r["usage"] for r in quota] == ["7+4=11", "7+4=11", "-"]
    assert [r["behaviour"] for r in quota] == [
        "request 1 of 2",
        "request 2 of 2",
        "refused by the limiter",
    ]

    # Streams over loopback: only what survives any TCP chunking is asserted.
    verdicts = {r["behaviour"]: (r["[DONE]"], r["usage"], r["client saw"]) for r in streams}
    assert verdicts == {
        "ok": ("yes", "7+4=11", "complete"),
        "truncate:events=3": ("no", "-", "ended without [DONE]"),
        "cut:bytes=200": ("no", "-", "RemoteProtocolError"),
        "no_done": ("no", "7+4=11", "ended without [DONE]"),
        "double_done": ("yes", "7+4=11", "[DONE] x2"),
        "error_event:after=2": ("no", "-", "error event"),
        "malformed_event:after=2": ("yes", "7+4=11", "event with bad JSON"),
        "line_endings; keepalive:every=2": ("yes", "7+4=11", "complete"),
    }
    by_behaviour = {r["behaviour"]: r for r in streams}
    assert by_behaviour["cut:bytes=200"]["bytes"] == "200"
    assert {r["status"] for r in streams} == {"200"}

    # In-process, the chunks are exactly the scripted ones.
    size1, size5, seeded = exact
    assert size1["behaviour"] == "chunking:size=1"
    assert size1["chunks"] == size1["bytes"]
    assert int(size5["chunks"]) == -(-int(size5["bytes"]) // 5)
    assert seeded["behaviour"] == "chunking:seed=7"
    assert int(size1["split chars"]) > 0
    assert re.fullmatch(r"would show \d+ x U\+FFFD", size1["each chunk decoded alone"])
    assert [r["client saw"] for r in exact] == ["complete"] * 3
    assert [r["usage"] for r in exact] == ["7+6=13"] * 3

    # The router: 429s absorbed, a cooling entry skipped without a call, a 503 only when every
    # entry is failing or cooling, and a stream falling through before any byte was sent.
    assert [r["status"] for r in router] == ["200", "200", "503", "200", "200"]
    assert [r["served by"] for r in router] == [
        "openrouter",
        "local",
        "-",
        "openrouter",
        "openrouter",
    ]
    trails = [r["entries tried or skipped"] for r in router]
    assert trails[0] == "openai/fake-large 429, openrouter/fake-medium 200"
    assert trails[1] == (
        "openai/fake-large cooling, openrouter/fake-medium 429, local/fake-small 200"
    )
    # the exhaustion 503 says what was tried, as a served answer does
    assert trails[2].startswith(
        "openai/fake-large cooling, openrouter/fake-medium cooling, local/fake-small 503"
    )
    assert trails[2].endswith("local/fake-small 503; Retry-After: 1")
    assert trails[4].startswith("openai/fake-large retried, openai/fake-large empty_stream, ")
    assert [r["client saw"] for r in router][1:3] == ["complete", "all_providers_exhausted"]

    # Cost routing: the cheapest fitting deployment, down the list on a 429, and the saving.
    assert [r["served by"] for r in cost[:5]] == [
        "cheap/fake-small 200",
        "mid/fake-medium 200",  # the cheap model cannot do tools
        "cheap/fake-small 429, mid/fake-medium 200",
        "dear/fake-large 200",  # only the large one sees images
        "mid/fake-medium 200",  # quality 60 asked for by header
    ]
    # The question is 5 words + 3 = 8 prompt tokens, the reply 12: small 8 x 0.15 + 12 x 0.6 =
    # 8.4 -> 9 msat; medium 8 x 1 + 12 x 4 + 1000 = 1056; the image-only request is 3 prompt
    # tokens on large: 3 x 5 + 12 x 15 + 2000 = 2195; the reference (large) for 8 + 12 is 2220.
    assert [r["reference"] for r in cost[:3]] == ["2220 msat"] * 3
    charged = [r["charged"] for r in cost[:5]]
    assert charged == ["9 msat", "1056 msat", "1056 msat", "2195 msat", "1056 msat"]
    assert cost[5]["charged"] == "5372 msat"
    assert cost[5]["saved"] == "5703 msat (51.5%)"

    # Three APIs through one chain: each request goes to an entry that speaks its API, the
    # Messages-only provider's 529 and 429 fall through, and every answer arrives whole.
    assert [(r["API"], r["request"].split(":")[0]) for r in apis] == [
        (api, kind) for api in ("chat", "responses", "messages") for kind in ("JSON", "stream")
    ]
    assert {(r["status"], r["served by"]) for r in apis} == {("200", "gateway")}
    skipped = "anthropic/fake-small skipped_api, gateway/fake-medium 200"
    assert [r["entries tried or skipped"] for r in apis] == [
        *[skipped] * 4,
        "anthropic/fake-small 529 retried, anthropic/fake-small 529, gateway/fake-medium 200",
        "anthropic/fake-small 429, gateway/fake-medium 200",
    ]
    assert [r["client saw"] for r in apis] == [
        "complete: finish_reason stop",
        "complete: [DONE]",
        "complete: status completed",
        "complete: response.completed",
        "complete: stop_reason end_turn",
        "complete: message_stop",
    ]
    for row in apis:  # the 529 and the 429 were the router's to see, never the client's
        assert "429" not in row["client saw"]
        assert "529" not in row["client saw"]
    assert [r["tokens in/out"] for r in apis] == ["7/12"] * 6

    # The ledger: one record per router request, exact msat costs from the fakes' sats prices.
    rows = {(r["provider"], r["status"]): r for r in usage}
    assert rows[("TOTAL", "")]["requests"] == "16"
    assert rows[("-", "exhausted")]["requests"] == "1"
    assert rows[("local", "success")]["cost"] == "4 msat"  # 7 x 0.15 + 4 x 0.6 = 3.45
    assert rows[("openrouter", "success")]["cost"] == "3069 msat"  # 3 x (7 + 4 x 4 + 1000)
    # the three APIs' six requests, each 7 in and 12 out on medium: 6 x (7 + 12 x 4 + 1000)
    gateway = rows[("gateway", "success")]
    assert (gateway["requests"], gateway["prompt"], gateway["completion"]) == ("6", "42", "72")
    assert gateway["cost"] == "6330 msat"
    assert rows[("TOTAL", "")]["cost"] == "14775 msat"  # 3073 + cost routing's 5372 + 6330


def test_sections_can_be_added() -> None:
    def play(stack: ExitStack, client: httpx.Client) -> Table:
        table = Table("step", "result")
        table.add(1, "router says hello")
        stack.callback(lambda: table.add(2, "stopped"))
        return table

    out = io.StringIO()
    assert run(out, [Section("The router", "A section added later.", play)]) == 0
    text = out.getvalue()
    assert "1. The router\n   A section added later.\n\n" in text
    assert "step  result\n----  -----------------\n1     router says hello\n2     stopped\n" in text


def test_header_hint_lists_only_present_headers() -> None:
    headers = httpx.Headers({"x-ratelimit-reset": "1700000002000", "Retry-After": "3"})
    assert header_hint(headers) == "retry-after: 3, x-ratelimit-reset: 1700000002000"
    assert header_hint(headers, ["x-ratelimit-reset"]) == "x-ratelimit-reset: 1700000002000"


def test_split_characters_counts_boundaries_inside_characters() -> None:
    data = "a😀b".encode()  # 1 + 4 + 1 bytes
    assert split_characters([data]) == 0
    assert split_characters([data[:2], data[2:]]) == 1
    assert split_characters([bytes([b]) for b in data]) == 3
    assert split_characters([data[:1], data[1:5], data[5:]]) == 0


def sse(*lines: str, end: str = "\n") -> list[bytes]:
    return [(end.join(lines) + end).encode()]


@pytest.mark.parametrize(
    ("chunks", "error", "outcome"),
    [
        (sse('data: {"usage": null}', "", "data: [DONE]", ""), None, "complete"),
        (sse('data: {"a": 1}', "", "data: [DONE]", "", "data: [DONE]", ""), None, "[DONE] x2"),
        (sse('data: {"a": 1}', ""), None, "ended without [DONE]"),
        (sse('data: {"error": {}}', ""), None, "error event"),
        (sse('data: {"oops', "", "data: [DONE]", ""), None, "event with bad JSON"),
        (sse('data: {"a": 1}', end="\r"), "RemoteProtocolError", "RemoteProtocolError"),
    ],
)
def test_exchange_outcome(chunks: list[bytes], error: str | None, outcome: str) -> None:
    seen = Exchange(200, httpx.Headers({"content-type": "text/event-stream"}), chunks, error)
    assert seen.outcome() == outcome


def test_exchange_usage_from_json_and_from_a_stream() -> None:
    usage = '{"usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}}'
    as_json = Exchange(200, httpx.Headers({"content-type": "application/json"}), [usage.encode()])
    assert as_json.usage == "7+4=11"
    as_stream = Exchange(
        200,
        httpx.Headers({"content-type": "text/event-stream"}),
        sse('data: {"usage": null}', "", f"data: {usage}", "", "data: [DONE]", "", end="\r\n"),
    )
    assert as_stream.usage == "7+4=11"
    assert as_stream.done == 1
    assert Exchange(429, httpx.Headers({"content-type": "application/json"}), [b"{}"]).usage == "-"


def events(*pairs: tuple[str, str]) -> list[bytes]:
    return sse(*[f"event: {name}\ndata: {data}\n" for name, data in pairs])


JSON = httpx.Headers({"content-type": "application/json"})
SSE = httpx.Headers({"content-type": "text/event-stream"})
STOP = ("message_stop", '{"type": "message_stop"}')
INCOMPLETE = (
    "error",
    '{"type": "error", "error": {"type": "api_error", "code": "stream_incomplete"}}',
)
DONE = ("response.completed", '{"type": "response.completed", "response": {"usage": null}}')


@pytest.mark.parametrize(
    ("api", "seen", "verdict"),
    [
        ("messages", Exchange(200, SSE, events(STOP)), "complete: message_stop"),
        ("messages", Exchange(200, SSE, events(STOP, STOP)), "message_stop x2"),
        (
            "messages",
            Exchange(200, SSE, events(("ping", '{"type": "ping"}'))),
            "ended without message_stop",
        ),
        (
            "messages",
            Exchange(200, SSE, events(INCOMPLETE)),
            "error: stream_incomplete",
        ),
        (
            "messages",
            Exchange(529, JSON, [b'{"type": "error", "error": {"type": "overloaded_error"}}']),
            "error: overloaded_error",
        ),
        ("responses", Exchange(200, SSE, events(DONE)), "complete: response.completed"),
        (
            "responses",
            Exchange(200, SSE, events(("error", '{"type": "error", "code": "stream_stalled"}'))),
            "error: stream_stalled",
        ),
        (
            "responses",
            Exchange(200, SSE, events(("response.failed", '{"type": "response.failed"}'))),
            "error: response.failed",
        ),
        (
            "responses",
            Exchange(200, JSON, [b'{"status": "incomplete"}']),
            "complete: status incomplete",
        ),
        (
            "chat",
            Exchange(200, SSE, sse('data: {"a": 1}', "", "data: [DONE]", "")),
            "complete: [DONE]",
        ),
        ("chat", Exchange(200, SSE, sse('data: {"a": 1}', "")), "ended without [DONE]"),
        (
            "chat",
            Exchange(503, JSON, [b'{"error": {"code": "all_providers_exhausted"}}']),
            "error: all_providers_exhausted",
        ),
        ("chat", Exchange(502, JSON, [b"{}"]), "error: 502"),
        ("chat", Exchange(200, JSON, [b"{oops"]), "bad JSON"),
        ("chat", Exchange(error="ReadTimeout"), "ReadTimeout"),
    ],
)
def test_api_verdict_is_the_apis_own_last_event(api: str, seen: Exchange, verdict: str) -> None:
    assert api_verdict(api, seen) == verdict


def test_tokens_in_out_reads_every_apis_usage() -> None:
    chat = b'{"usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}}'
    assert tokens_in_out(Exchange(200, JSON, [chat])) == "7/4"
    started = (
        '{"type": "message_start", "message": {"usage": {"input_tokens": 7, "output_tokens": 1}}}'
    )
    delta = '{"type": "message_delta", "usage": {"output_tokens": 12}}'
    anthropic = events(("message_start", started), ("message_delta", delta), STOP)
    assert tokens_in_out(Exchange(200, SSE, anthropic)) == "7/12"  # the later count wins
    usage = '{"usage": {"input_tokens": 5, "output_tokens": 3}}'
    done = '{"type": "response.completed", "response": ' + usage + "}"
    assert tokens_in_out(Exchange(200, SSE, events(("response.completed", done)))) == "5/3"
    assert tokens_in_out(Exchange(200, SSE, events(DONE))) == "-"
    assert tokens_in_out(Exchange(200, SSE, sse("data: [oops", ""))) == "-"


def test_exchange_text_decodes_across_chunks() -> None:
    data = "naïve 日本語".encode()
    seen = Exchange(chunks=[bytes([b]) for b in data])
    assert seen.text() == "naïve 日本語"
    assert seen.body == data


def test_table_rejects_a_row_of_the_wrong_width() -> None:
    table = Table("a", "b")
    with pytest.raises(ValueError, match="expected 2 cells, got 1"):
        table.add("only one")
