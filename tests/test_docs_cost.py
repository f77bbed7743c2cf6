"""The cost routing page says what the code does: its examples run and print what the page shows,
`waterfall-asgi explain` prints the transcript the page includes, and its tables list exactly the
settings, headers, import styles, capabilities and exclusion reasons the code has."""

from __future__ import annotations

import doctest
import json
import re
import typing
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from docs_helpers import DOCS, EXAMPLES, ROOT, code, rows, run_example, section, without_ttfb

from waterfall_asgi import (
    ImportStyle,
    MemoryLedger,
    ModelInfo,
    Rate,
    Route,
    RouterConfig,
    WaterfallMiddleware,
    convert,
    load_config,
    parse_models,
    rank,
    required_capabilities,
)
from waterfall_asgi.cli import main
from waterfall_asgi.cost import NoFittingDeployment
from waterfall_fakes import FakeNetwork, FakeProvider

PAGE = DOCS / "router" / "cost.md"
TEXT = PAGE.read_text(encoding="utf-8")


# -- the examples ------------------------------------------------------------------------------
def test_the_page_includes_every_cost_example_and_is_in_the_nav() -> None:
    names = {p.name for p in EXAMPLES.glob("cost_*")}
    assert names == {
        "cost_route.toml",
        "cost_route.py",
        "cost_route.txt",
        "cost_request.json",
        "cost_request_tools.json",
        "cost_import.toml",
        "cost_import.py",
        "cost_import.txt",
        "cost_explain.txt",
    }
    for name in names:
        assert f'--8<-- "docs/examples/{name}"' in TEXT, name
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert "      - Cost routing: router/cost.md\n" in nav


def test_the_route_example_prints_what_the_page_shows(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing is written outside its own temporary directory
    out = run_example("cost_route.py", capsys)
    assert list(tmp_path.iterdir()) == []
    shown = (EXAMPLES / "cost_route.txt").read_text(encoding="utf-8")
    assert without_ttfb(out) == without_ttfb(shown)
    masked = [line for line in without_ttfb(shown) if line.endswith((" <ms> <ms>", " - -"))]
    assert len(masked) == 4 + 1  # the three providers, the rejected request, the total
    total = without_ttfb(shown)[-1].split()
    assert total[:1] + total[-8:] == [
        *("TOTAL", "3246", "msat", "6570", "msat", "3324", "msat"),
        *("<ms>", "<ms>"),
    ]


def test_the_route_walkthrough_matches_the_example() -> None:
    walkthrough = section(TEXT, "## A first route")
    shown = (EXAMPLES / "cost_route.txt").read_text(encoding="utf-8")
    assert "`mid` serves" in walkthrough
    assert "1. no header: 200, attempts mid/" in shown
    assert "now `cheap` serves, for 8 msat instead of 1048" in walkthrough
    assert "cheap            1       0     0.0%       8          10     18     8 msat" in shown
    assert "mid              1       0     0.0%       8          10     18  1048 msat" in shown
    assert "400 `no_fitting_deployment`" in walkthrough
    assert "3. x-waterfall-budget: 1000: 400 no_fitting_deployment" in shown
    assert "the next cheapest, `dear`" in walkthrough
    assert "attempts mid/fake-medium 429, dear/fake-large 200" in shown


def test_the_import_example_prints_what_the_page_shows(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    out = run_example("cost_import.py", capsys)
    assert out == (EXAMPLES / "cost_import.txt").read_text(encoding="utf-8")
    # the failed refresh is logged, and says the earlier prices are kept
    assert "price import from mid failed: ConnectError" in caplog.text
    assert "(keeping 3 earlier prices)" in caplog.text


# -- explain -----------------------------------------------------------------------------------
EXPLAIN = [
    ["--config", "cost_route.toml", "cost_request.json"],
    ["--config", "cost_route.toml", "cost_request.json", "--min-quality", "30"],
    ["--config", "cost_route.toml", "cost_request.json", "--min-quality", "99"],
    ["--config", "cost_route.toml", "cost_request_tools.json", "--min-quality", "30"],
    ["--config", "cost_route.toml", "cost_request_tools.json", "--budget", "100000"],
]


def explain_transcript(capsys: pytest.CaptureFixture[str]) -> tuple[str, list[int]]:
    """Run every ``explain`` command of the page (in docs/examples); return what a console shows
    (each command, its standard output, then its standard error) and the exit statuses."""
    capsys.readouterr()
    parts, codes = [], []
    for args in EXPLAIN:
        codes.append(main(["explain", *args]))
        out = capsys.readouterr()
        parts.append(f"$ waterfall-asgi explain {' '.join(args)}\n{out.out}{out.err}")
    return "".join(parts), codes


def test_explain_prints_the_transcript_the_page_includes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(EXAMPLES)
    transcript, codes = explain_transcript(capsys)
    assert transcript == (EXAMPLES / "cost_explain.txt").read_text(encoding="utf-8")
    assert codes == [0, 0, 1, 0, 1]  # the page: 1 when nothing fits or an option is wrong


def test_the_transcript_says_what_the_page_says(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = (EXAMPLES / "cost_explain.txt").read_text(encoding="utf-8")
    # the worked example: 13 prompt tokens, 10 expected; mid at 1053 msat, worst case the same
    assert "13 prompt tokens (estimated), 10 completion tokens expected, costs in msat" in shown
    assert "  1. mid/fake-medium  ~1053 msat  (worst 1053)  quality 70\n" in shown
    estimate = "13 × 1 + 10 × 4 + 1000 = **1053 msat**"
    assert estimate in section(TEXT, "## The estimate and the worst case")
    # no max_tokens: 256 expected, the worst case is the whole context window
    config = load_config(EXAMPLES / "cost_route.toml")
    tools = json.loads((EXAMPLES / "cost_request_tools.json").read_text(encoding="utf-8"))
    ranking = rank(config, "auto", tools, min_quality=Decimal(30))
    mid = ranking.ranked[0]
    assert (ranking.completion_tokens, ranking.needs) == (256, frozenset({"tools"}))
    assert mid.worst_case == ranking.prompt_tokens + (32768 - ranking.prompt_tokens) * 4 + 1000
    assert f"(worst {mid.worst_case})" in shown
    assert "excluded: cannot do tools" in shown
    # --json has the keys the page lists, and the same numbers as the text
    monkeypatch.chdir(EXAMPLES)
    capsys.readouterr()
    assert main(["explain", *EXPLAIN[0], "--json"]) == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    (option,) = [r for r in rows(TEXT, "## `waterfall-asgi explain`") if code(r[0]) == "--json"]
    listed = re.findall(r"`(\w+)`", option[1])
    assert [key for key in listed if key != "reason"] == list(data)
    assert "reason" in data["excluded"][0]
    assert [c["deployment"] for c in data["ranked"]] == ["mid/fake-medium", "dear/fake-large"]
    assert data["ranked"][0]["estimate"] == "1053"
    assert data["excluded"][0]["reason"] == "quality 40 is below 50"
    assert data["reference"]["deployment"] == "dear/fake-large"
    assert data["error"] is None


def test_the_explain_table_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    options = set(re.findall(r"(--[a-z][a-z-]+)", capsys.readouterr().out)) - {"--help"}
    assert {code(r[0]) for r in rows(TEXT, "## `waterfall-asgi explain`")} == options


def test_explain_sees_config_prices_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(EXAMPLES)
    assert main(["explain", "--config", "cost_import.toml", "cost_request.json"]) == 0
    out = capsys.readouterr().out
    assert "  1. dear/fake-large  ~1172 msat  (worst 1172)  quality 0  (reference)" in out
    assert "cheap/fake-small" not in out  # the route lists no deployments: priced ones only
    listed = load_config(EXAMPLES / "cost_import.toml").model_dump(mode="json")
    listed["routes"]["auto"]["deployments"] = ["cheap/fake-small", "dear/fake-large"]
    config = tmp_path / "listed.json"
    config.write_text(json.dumps(listed), encoding="utf-8")
    request = str(EXAMPLES / "cost_request.json")
    assert main(["explain", "--config", str(config), request]) == 0
    out = capsys.readouterr().out
    assert "  -  cheap/fake-small  excluded: no price" in out
    text = " ".join(section(TEXT, "## `waterfall-asgi explain`").split())
    assert "a route that lists its `deployments` shows them as `no price`" in text


# -- the page's Python -------------------------------------------------------------------------
def test_the_pycon_blocks_on_the_page_run() -> None:
    blocks = re.findall(r"```pycon\n(.*?)```", TEXT, flags=re.S)
    assert len(blocks) == 1
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for number, block in enumerate(blocks):
        test = parser.get_doctest(block, {}, f"cost.md[{number}]", str(PAGE), 0)
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert (result.failed, result.attempted) == (0, 6)
    # "0.0072 sat, rounded up to a whole sat, is 1 sat, 139 times too much"
    assert round(Decimal(1) / Decimal("0.0072")) == 139
    assert "0.0072 sat, rounded up to a whole sat, is 1 sat, 139\ntimes too much" in TEXT


def test_the_byte_count_of_the_worked_example() -> None:
    request = json.loads((EXAMPLES / "cost_request.json").read_text(encoding="utf-8"))
    (message,) = request["messages"]
    size = len(message["content"].encode())
    assert f'"{message["content"]}" is {size} bytes, so {-(-size // 4)} tokens' in TEXT
    config = load_config(EXAMPLES / "cost_route.toml")
    assert rank(config, "auto", request).prompt_tokens == -(-size // 4) + 4 == 13


# -- the tables --------------------------------------------------------------------------------
def test_the_settings_table_lists_every_route_setting_with_its_default() -> None:
    table = {code(r[0]): r[1] for r in rows(TEXT, "## Settings")}
    assert list(table) == list(Route.model_fields)
    defaults = Route()
    assert table["min_quality"] == str(defaults.min_quality)
    assert table["default_completion_tokens"] == str(defaults.default_completion_tokens)
    assert defaults.budget is None
    assert table["budget"] == "none"
    assert defaults.quality_bounds is None
    assert table["quality_bounds"].startswith("none")
    assert f"default_completion_tokens` ({defaults.default_completion_tokens})" in TEXT


def test_the_configuration_page_lists_every_cost_key() -> None:
    page = (DOCS / "router" / "configuration.md").read_text(encoding="utf-8")
    table = {code(r[0]): r for r in rows(page, "## Keys")}
    keys = {key: row[2] for key, row in table.items()}
    assert {k for k in keys if k.startswith("routes.")} == {
        f"routes.NAME.{name}" for name in Route.model_fields
    }
    assert {k for k in keys if k.startswith("models.")} == {
        f"models.NAME.{name}" for name in ModelInfo.model_fields
    }
    assert {"rates", "price_refresh", "providers.NAME.import_prices"} <= set(keys)
    assert set(re.findall(r"`(\w+)`", keys["rates"])) >= set(Rate.model_fields)
    assert table["price_refresh"][1] == "none"
    assert RouterConfig.model_fields["price_refresh"].default is None
    styles = set(re.findall(r"`(\w+)`", keys["providers.NAME.import_prices"]))
    assert set(typing.get_args(ImportStyle)) <= styles
    (price,) = [v for k, v in keys.items() if k.endswith(".price")]
    assert "`per`" in price
    assert "`million`" in price
    assert "cost.md#prices" in price


def test_the_import_table_lists_every_style_and_its_unit() -> None:
    table = {code(r[0]): r for r in rows(TEXT, "### Prices imported from the providers")}
    assert list(table) == list(typing.get_args(ImportStyle))
    listing = {
        "data": [
            {
                "id": "both",
                "pricing": {"prompt": "0.000001", "completion": "0.000002"},
                "sats_pricing": {"prompt": 0.001, "completion": 0.002},
            },
            {"id": "usd", "pricing": {"prompt": "0.000001", "completion": "0.000002"}},
        ]
    }
    body = json.dumps(listing).encode()
    units = {
        style: parse_models(body, style, warnings=[]) for style in typing.get_args(ImportStyle)
    }
    assert table["openrouter"][2] == f"`{units['openrouter']['usd'].unit}`" == "`usd_micro`"
    assert table["routstr"][2] == f"`{units['routstr']['both'].unit}`" == "`msat`"
    assert "usd" not in units["routstr"]  # no sats_pricing: skipped
    auto = {model: price.unit for model, price in units["auto"].items()}
    assert auto == {"both": "msat", "usd": "usd_micro"}  # sats_pricing first, else pricing
    assert table["auto"][2] == "`msat` or `usd_micro`"


def test_the_capabilities_table_is_what_requests_are_checked_for() -> None:
    table = {code(r[0]): r[1] for r in rows(TEXT, "## Quality and capabilities")}
    literal = typing.get_args(ModelInfo.model_fields["capabilities"].annotation)[0]
    assert list(table) == list(typing.get_args(literal))
    user = {"role": "user", "content": "hi"}
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    examples: dict[str, list[dict[str, Any]]] = {
        "tools": [{"tools": [{"type": "function"}]}, {"functions": [{"name": "f"}]}],
        "vision": [
            {"messages": [{"role": "user", "content": [image]}]},
            {"messages": [{"role": "user", "content": [{"type": "input_image"}]}]},
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            {"messages": [{"role": "user", "content": [{"type": "image"}]}]},
        ],
        "json_schema": [
            {"response_format": {"type": "json_schema"}},
            {"response_format": {"type": "json_object"}},
            {"text": {"format": {"type": "json_schema"}}},
        ],
    }
    words = {
        "tools": ["tools", "functions"],
        "vision": ["content", "image_url", "input_image", "image"],
        "json_schema": ["response_format", "text", "json_schema", "json_object"],
    }
    for capability, payloads in examples.items():
        for payload in payloads:
            assert required_capabilities({"messages": [user], **payload}) == {capability}
        assert re.findall(r"`(\w+)`", table[capability]) == words[capability]
    assert list(table)[len(examples) :] == ["prefill"]  # what no request needs: see usage.md
    assert "continue a stream" in table["prefill"]
    assert required_capabilities({"messages": [user], "tools": []}) == frozenset()
    assert required_capabilities({"response_format": {"type": "text"}}) == frozenset()


def test_the_headers_table_lists_the_headers_of_cost_routing() -> None:
    source = "".join(
        (ROOT / "src" / "waterfall_asgi" / name).read_text(encoding="utf-8")
        for name in ("middleware.py", "cost.py")
    )
    used = set(re.findall(r"x-waterfall-(?:min-quality|budget|estimated-cost)", source))
    assert {code(r[0]) for r in rows(TEXT, "### Headers")} == used
    assert len(used) == 3


def _reason_patterns() -> list[re.Pattern[str]]:
    patterns = []
    for row in rows(TEXT, "## Which deployment serves"):
        template = re.escape(code(row[1]))
        template = re.sub(r"[A-Z]+(?:\\ [A-Z]+)*", ".+", template)
        patterns.append(re.compile(template))
    return patterns


def test_every_exclusion_reason_is_in_the_table_in_order() -> None:
    config = RouterConfig.model_validate(
        {
            "providers": {"a": {"base_url": "http://a/v1"}},
            "deployments": [
                {"provider": "a", "model": "dollars", "price": {"unit": "usd", "prompt": "1"}},
                {"provider": "a", "model": "weak", "price": {"prompt": "1"}},
                {"provider": "a", "model": "no-tools", "price": {"prompt": "1"}},
                {"provider": "a", "model": "tiny", "price": {"prompt": "1"}},
                {"provider": "a", "model": "dear", "price": {"prompt": "1", "request": "999"}},
                {"provider": "a", "model": "fine", "price": {"prompt": "1"}},
            ],
            "models": {
                "weak": {"quality": 10, "capabilities": ["tools"]},
                "no-tools": {"quality": 50, "context_window": 1000},
                "tiny": {"quality": 50, "context_window": 12, "capabilities": ["tools"]},
                "dear": {"quality": 50, "context_window": 1000, "capabilities": ["tools"]},
                "fine": {"quality": 50, "context_window": 1000, "capabilities": ["tools"]},
                "endless": {"quality": 50, "capabilities": ["tools"]},
            },
            "routes": {
                "auto": {
                    "unit": "msat",
                    "min_quality": 50,
                    "deployments": [
                        "a/unpriced",
                        "a/dollars",
                        "a/weak",
                        "a/no-tools",
                        "a/tiny",
                        "a/dear",
                        "a/fine",
                    ],
                },
                "open": {
                    "min_quality": 50,
                    "deployments": [{"provider": "a", "model": "endless", "price": {"prompt": 1}}],
                },
            },
        }
    )
    tools = {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}
    ranking = rank(config, "auto", {**tools, "max_tokens": 10}, budget=500)
    assert [c.deployment.model for c in ranking.ranked] == ["fine"]
    reasons = [c.excluded or "" for c in ranking.excluded]
    with pytest.raises(NoFittingDeployment) as caught:
        rank(config, "open", tools, budget=500)
    reasons += [c.excluded or "" for c in caught.value.ranking.excluded]
    patterns = _reason_patterns()
    assert len(reasons) == len(patterns) == 7
    for reason, pattern in zip(reasons, patterns, strict=True):
        assert pattern.fullmatch(reason), (reason, pattern.pattern)
    assert reasons[1] == "no rate from 'usd' to 'msat' in the config's rates"
    assert f"`{reasons[1]}`" in section(
        TEXT, "### Units are converted through the configured rates only"
    )


def test_units_convert_through_a_configured_rate_only() -> None:
    def config(*rates: tuple[str, str, str]) -> RouterConfig:
        return RouterConfig.model_validate(
            {
                "providers": {},
                "rates": [{"source": s, "target": t, "rate": r} for s, t, r in rates],
            }
        )

    assert convert(Decimal("0.0072"), "sat", "msat", config(("sat", "msat", "1000"))) == Decimal(
        "7.2000"
    )
    with pytest.raises(LookupError, match="no rate from 'sat' to 'msat'"):  # no inverse
        convert(Decimal(1), "sat", "msat", config(("msat", "sat", "0.001")))
    with pytest.raises(LookupError, match="no rate from 'sat' to 'msat'"):  # no chain
        convert(Decimal(1), "sat", "msat", config(("sat", "usd", "0.001"), ("usd", "msat", "1e6")))
    with pytest.raises(LookupError, match="no rate from 'usd' to 'usd_micro'"):  # no built-in
        convert(Decimal(1), "usd", "usd_micro", config())
    text = " ".join(
        section(TEXT, "### Units are converted through the configured rates only").split()
    )
    assert "no built-in exchange rates, no inverse of a rate, no chain of two rates" in text


def test_ties_go_to_quality_then_config_order() -> None:
    same = {"prompt": "1", "completion": "1"}
    config = RouterConfig.model_validate(
        {
            "providers": {"a": {"base_url": "http://a/v1"}, "b": {"base_url": "http://b/v1"}},
            "deployments": [
                {"provider": "a", "model": "low", "price": same},
                {"provider": "b", "model": "high", "price": same},
                {"provider": "a", "model": "high", "price": same},
                {"provider": "a", "model": "cheaper", "price": {"prompt": "1"}},
            ],
            "models": {"high": {"quality": 80}, "low": {"quality": 20}, "cheaper": {}},
            "routes": {"auto": {}},
        }
    )
    ranking = rank(config, "auto", {"messages": [{"role": "user", "content": "hi"}]})
    assert [c.deployment.key for c in ranking.ranked] == ["a/cheaper", "b/high", "a/high", "a/low"]
    # the default reference: the dearest fitting, ties again to quality, then config order
    assert ranking.reference is not None
    assert ranking.reference.deployment.key == "b/high"
    assert "**higher quality first**, then of **config order**" in TEXT


def test_the_budget_header_can_only_lower_the_routes_budget() -> None:
    config = load_config(EXAMPLES / "cost_route.toml")
    tight = config.model_copy(
        update={"routes": {"auto": config.routes["auto"].model_copy(update={"budget": 1100})}}
    )
    request = json.loads((EXAMPLES / "cost_request.json").read_text(encoding="utf-8"))
    assert [c.deployment.provider for c in rank(tight, "auto", request).ranked] == ["mid"]
    assert "(the smaller of the two when both\nare set)" in TEXT


def test_the_error_on_the_page_is_the_one_the_router_sends(
    capsys: pytest.CaptureFixture[str],
) -> None:
    (shown,) = re.findall(r"```json\n(\{\"error\".*?)```", TEXT, flags=re.S)
    error = json.loads(shown)["error"]
    out = run_example("cost_route.py", capsys)
    lines = out.split("3. x-waterfall-budget: 1000: 400 no_fitting_deployment: ", 1)[1]
    message = " ".join(line.strip() for line in lines.split("\n4.", 1)[0].splitlines())
    assert error["message"] == message
    assert (error["code"], error["type"]) == ("no_fitting_deployment", "invalid_request_error")


@pytest.mark.anyio
async def test_a_route_is_listed_and_exhausted_like_a_chain() -> None:
    config = load_config(EXAMPLES / "cost_route.toml")
    request = json.loads((EXAMPLES / "cost_request.json").read_text(encoding="utf-8"))
    upstreams = FakeNetwork(
        {h: FakeProvider(name=h, script=["rate_limit"]) for h in ("cheap", "mid", "dear")}
    )
    app = WaterfallMiddleware(None, config, transport=upstreams, ledger=MemoryLedger())
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
        models = (await client.get("/v1/models")).json()["data"]
        low = {"x-waterfall-min-quality": "30"}
        reply = await client.post("/v1/chat/completions", json=request, headers=low)
    await app.shutdown()
    (route,) = [m for m in models if m["id"] == "auto"]
    assert route["waterfall"] == {
        "kind": "route",
        "min_quality": "50",
        "entries": ["cheap/fake-small", "mid/fake-medium", "dear/fake-large"],
        "apis": ["chat"],
    }
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "all_providers_exhausted"
    text = " ".join(section(TEXT, "## Which deployment serves").split())
    assert "when all of them fail, the answer is 503 `all_providers_exhausted`" in text
    assert '`GET /v1/models` lists each route with `"kind": "route"`, its `min_quality`' in text
    assert "its priced candidates and the APIs they serve (`apis`)" in text


# -- the other pages ---------------------------------------------------------------------------
def test_the_errors_page_has_the_cost_routing_errors() -> None:
    page = (DOCS / "router" / "errors.md").read_text(encoding="utf-8")
    (row,) = [line for line in page.splitlines() if "`no_fitting_deployment`" in line]
    assert row.startswith("| 400 |")
    assert "cost.md" in row
    (value,) = [line for line in page.splitlines() if "`invalid_value`" in line]
    assert "`x-waterfall-min-quality`" in value
    assert "`x-waterfall-budget`" in value


def test_the_reference_page_renders_the_cost_modules() -> None:
    page = (DOCS / "reference" / "router.md").read_text(encoding="utf-8")
    rendered = set(re.findall(r"^::: (waterfall_asgi[\w.]*)$", page, re.MULTILINE))
    assert {"waterfall_asgi.cost", "waterfall_asgi.pricing"} <= rendered


def test_the_status_pages_say_the_cost_router_is_ready() -> None:
    for name in ("index.md", "architecture.md"):
        page = (DOCS / name).read_text(encoding="utf-8")
        assert "planned" not in page, name
        assert "router/cost.md" in page, name
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (item,) = [i for i in readme.split("\n- ") if i.startswith("**Cost router**")]
    item = item.split("\n\n", 1)[0]
    assert "planned" not in item
    assert "(docs/router/cost.md)" in item
