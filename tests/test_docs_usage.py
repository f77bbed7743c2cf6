"""The usage and ledger pages say what the code does: their examples run and print what the pages
show, and their tables list exactly the statuses, fields, settings and options the code has."""

from __future__ import annotations

import dataclasses
import inspect
import re
import tomllib
import typing
from pathlib import Path

import httpx
import openai
import pytest
from docs_helpers import DOCS, EXAMPLES, ROOT, code, run_example, table, without_ttfb

from waterfall_asgi import (
    EventAligner,
    LedgerSettings,
    MemoryLedger,
    SQLiteLedger,
    Status,
    StreamObserver,
    UsageRecord,
    WaterfallMiddleware,
    load_config,
)
from waterfall_asgi.cli import main
from waterfall_fakes import FakeNetwork, FakeProvider

USAGE = DOCS / "router" / "usage.md"
LEDGER = DOCS / "router" / "ledger.md"
USAGE_EXAMPLES = sorted(EXAMPLES.glob("usage_*.py"))


# -- the examples ------------------------------------------------------------------------------
def test_every_usage_example_is_on_a_page() -> None:
    pages = USAGE.read_text(encoding="utf-8") + LEDGER.read_text(encoding="utf-8")
    names = {p.name for p in EXAMPLES.glob("usage_*") if p.suffix in {".py", ".txt", ".toml"}}
    assert names >= {"usage_records.py", "usage_cost.py", "usage_sqlite.py"}
    for name in names:
        assert f'--8<-- "docs/examples/{name}"' in pages, name


@pytest.mark.parametrize("path", USAGE_EXAMPLES, ids=lambda p: p.name)
def test_the_example_runs(
    path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing is written outside a temporary directory
    run_example(path.name, capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["usage_records", "usage_streams"])
def test_the_example_prints_what_the_page_shows(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = (EXAMPLES / f"{name}.txt").read_text(encoding="utf-8")
    assert run_example(f"{name}.py", capsys) == shown


def test_the_usage_command_prints_what_the_ledger_page_shows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run_example("usage_sqlite.py", capsys)
    shown = (EXAMPLES / "usage_sqlite.txt").read_text(encoding="utf-8")
    assert without_ttfb(out) == without_ttfb(shown)
    masked = [line for line in without_ttfb(shown) if line.endswith((" <ms> <ms>", " - -"))]
    assert len(masked) == 4 + 5  # the groups and the total of each table, nothing else
    assert "  ttfb p50 ms  ttfb p95 ms" in shown


def test_the_cost_event_on_the_page_is_what_the_example_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run_example("usage_cost.py", capsys)
    text = USAGE.read_text(encoding="utf-8")
    (shown,) = re.findall(r"```text\n(event: waterfall\.cost\n.*?)```", text, flags=re.S)
    request_id = re.compile(r'"id": "[0-9a-f]{32}"')
    assert request_id.sub('"id": ID', out) == request_id.sub('"id": ID', shown) + "\n"


def test_the_toml_on_the_usage_page_is_a_valid_priced_deployment() -> None:
    text = USAGE.read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    (block,) = [b for b in blocks if "[[deployments]]" in b]
    (continuing,) = [b for b in blocks if "continue_streams" in b]  # the other: valid too
    continued = load_config(
        {"providers": {"a": {"base_url": "http://a/v1"}}, **tomllib.loads(continuing)}
    )
    assert continued.policy.continue_streams
    assert "prefill" in continued.models["claude-sonnet"].capabilities
    data = tomllib.loads(block)
    config = load_config({"providers": {"openai": {"base_url": "http://openai/v1"}}, **data})
    (deployment,) = config.deployments
    assert deployment.price is not None
    assert deployment.price.cost(7, 12) == 9  # the page's worked example


# -- the tables --------------------------------------------------------------------------------
def test_the_statuses_table_lists_every_status_in_order() -> None:
    rows = table(USAGE, "## How a request ends")
    assert [code(row[0]) for row in rows] == list(typing.get_args(Status))


def test_the_record_table_lists_every_field_in_order() -> None:
    rows = table(LEDGER, "## The record")
    assert [code(row[0]) for row in rows] == [f.name for f in dataclasses.fields(UsageRecord)]
    statuses = set(re.findall(r"`(\w+)`", rows[[code(r[0]) for r in rows].index("status")][2]))
    assert statuses == set(typing.get_args(Status))


def test_the_error_event_table_lists_the_codes_the_relay_sends() -> None:
    source = (ROOT / "src" / "waterfall_asgi" / "relay.py").read_text(encoding="utf-8")
    sent = set(re.findall(r'error_event\(\s*(?:(?:f?"[^"]*"\s*)+|[\w.]+),\s*"(\w+)"', source))
    assert sent == {"stream_interrupted", "stream_stalled", "stream_incomplete"}
    rows = table(USAGE, "### Error events")
    assert {code(row[0]) for row in rows} == sent


def test_the_configuration_page_lists_every_ledger_setting_with_its_default() -> None:
    rows = {code(r[0]): r[1] for r in table(DOCS / "router" / "configuration.md", "## Keys")}
    defaults = LedgerSettings()
    assert {k for k in rows if k.startswith("ledger.")} == {
        f"ledger.{name}" for name in LedgerSettings.model_fields
    }
    assert rows["ledger.path"] == f"`{defaults.path}`"
    assert rows["ledger.drain_seconds"] == f"{defaults.drain_seconds:g}"
    assert rows["ledger.cost_event"] == str(defaults.cost_event).lower()
    assert rows["ledger.lease"] == f"{defaults.lease:g}"
    assert rows["ledger.url"] == rows["ledger.url_env"] == rows["ledger.instance_id"] == "none"
    assert any(key.endswith(".price") for key in rows)


def test_the_example_config_sets_every_ledger_key_and_a_price(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-docs-1")
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-docs-2")
    config = load_config(EXAMPLES / "router.toml")
    assert config.ledger == LedgerSettings()  # the defaults, spelled out
    text = (EXAMPLES / "router.toml").read_text(encoding="utf-8")
    raw = tomllib.loads(text)
    # the keys with no value to spell out (no default, or another store) are shown commented
    commented = set(re.findall(r"^# ([a-z_]+) = ", text.partition("[ledger]")[2], re.MULTILINE))
    assert commented == {"url", "url_env", "instance_id"}
    assert set(raw["ledger"]) | commented == set(LedgerSettings.model_fields)
    (fast,) = [d for d in config.chains["fast"] if d.key == "openai/gpt-4o-mini"]
    price = config.price_of(fast)  # the chain's entry takes the listed deployment's price
    assert price is not None
    assert (price.unit, price.cost(7, 12)) == ("usd_micro", 9)


def test_the_usage_command_table_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["usage", "--help"])
    options = set(re.findall(r"(--[a-z][a-z-]+)", capsys.readouterr().out)) - {"--help"}
    rows = {code(r[0]): r[1] for r in table(LEDGER, "## `waterfall-asgi usage`")}
    assert set(rows) == options
    assert rows["--db"] == f"`{LedgerSettings().path}`"  # the router's default file
    assert rows["--by"] == "`provider`"


def test_the_numbers_the_pages_quote_are_the_codes_defaults() -> None:
    usage, ledger = (p.read_text(encoding="utf-8") for p in (USAGE, LEDGER))
    cap = inspect.signature(StreamObserver).parameters["max_bytes"].default
    assert cap == inspect.signature(EventAligner).parameters["cap"].default == 64 * 1024
    assert "at most **64 KiB**" in usage
    assert f"`ledger.drain_seconds` ({LedgerSettings().drain_seconds:g} by default)" in usage
    sqlite = inspect.signature(SQLiteLedger).parameters
    assert (sqlite["batch_size"].default, sqlite["flush_interval"].default) == (1024, 0.25)
    assert "up to 1024 records, or whatever arrived within 0.25 s" in ledger
    assert sqlite["max_pending"].default == 10_000
    assert "bounded (10 000 records)" in ledger
    assert "`waterfall_asgi.usage`" in usage
    assert "`waterfall_asgi.ledger`" in ledger


def test_the_reference_page_renders_the_usage_modules() -> None:
    page = (DOCS / "reference" / "router.md").read_text(encoding="utf-8")
    rendered = set(re.findall(r"^::: (waterfall_asgi[\w.]*)$", page, re.MULTILINE))
    assert {
        "waterfall_asgi.usage",
        "waterfall_asgi.ledger",
        "waterfall_asgi.ledger_sqlite",
        "waterfall_asgi.usage_report",
    } <= rendered


# -- what the pages say about the official openai client ---------------------------------------
@pytest.mark.anyio
async def test_the_openai_client_raises_on_an_error_event_and_ignores_the_cost_event() -> None:
    upstreams = FakeNetwork({"openai": FakeProvider(script=["truncate:events=3", "ok"])})
    config = {
        "providers": {"openai": {"base_url": "http://openai/v1"}},
        "deployments": [{"provider": "openai", "model": "fake-small", "price": {"prompt": "1"}}],
        "chains": {"fast": ["openai/fake-small"]},
        "ledger": {"path": None, "cost_event": True},
    }
    ledger = MemoryLedger()
    app = WaterfallMiddleware(None, config, transport=upstreams, ledger=ledger)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app))
    client = openai.AsyncOpenAI(
        base_url="http://proxy/v1", api_key="sk-any", http_client=http, max_retries=0
    )
    messages: list[typing.Any] = [{"role": "user", "content": "Hi there"}]
    async with client:
        stream = await client.chat.completions.create(model="fast", messages=messages, stream=True)
        with pytest.raises(openai.APIError) as caught:
            async for _ in stream:
                pass
        assert str(caught.value) == "The upstream stream ended without data: [DONE]."
        stream = await client.chat.completions.create(model="fast", messages=messages, stream=True)
        chunks = [chunk async for chunk in stream]
    await app.shutdown()
    assert chunks[-1].choices[0].finish_reason == "stop"  # the cost event never surfaced
    assert all(chunk.choices for chunk in chunks)  # nor the usage chunk it did not ask for
    records = list(ledger.records.values())
    assert [(r.status, r.cost) for r in records] == [("stream_incomplete", None), ("success", 5)]
