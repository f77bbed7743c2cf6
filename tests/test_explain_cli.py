"""``waterfall-asgi explain --config FILE REQUEST.json``: the ranking a request would get."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from waterfall_asgi.cli import main

CONFIG = """\
[providers.a]
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-explain-DISTINCTIVE-secret"

[providers.b]
base_url = "http://127.0.0.1:10/v1"

[models.small]
quality = "0.6"
context_window = 8000
capabilities = ["tools"]

[models.big]
quality = "0.9"
context_window = 100000
capabilities = ["tools", "vision"]

[[rates]]
source = "sat"
target = "msat"
rate = "1000"

[chains]
plain = ["a/small"]

[routes.smart]
min_quality = "0.5"
quality_bounds = ["0.5", "0.95"]
budget = 5000

[[routes.smart.deployments]]
provider = "a"
model = "small"
price = {unit = "msat", prompt = "0.5", completion = "2"}

[[routes.smart.deployments]]
provider = "b"
model = "big"
price = {unit = "sat", prompt = "0.004", completion = "0.016", request = "1"}

[routes.fixed]
deployments = [{provider = "a", model = "small", price = {prompt = "1"}}]
"""

# 7 prompt tokens (4 per message + 12 bytes / 4), 100 completion tokens:
# a/small: 7 x 0.5 + 100 x 2 = 203.5 msat; b/big: (7 x 0.004 + 100 x 0.016 + 1) sat = 2628 msat
REQUEST = {
    "model": "smart",
    "messages": [{"role": "user", "content": "Hello there!"}],
    "max_tokens": 100,
}
HEAD = "route 'smart': 7 prompt tokens (estimated), 100 completion tokens expected, costs in msat\n"
SMALL = "a/small  ~203.5 msat  (worst 203.5)  quality 0.6"
BIG = "b/big  ~2628 msat  (worst 2628)  quality 0.9  (reference)"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "router.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def write(tmp_path: Path, request: Any, name: str = "request.json") -> Path:
    path = tmp_path / name
    path.write_text(request if isinstance(request, str) else json.dumps(request), encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["explain", "--config", str(config), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_ranking_as_text(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, config, str(write(tmp_path, REQUEST))) == (
        0,
        HEAD + f"minimum quality 0.5, budget 5000 msat\n  1. {SMALL}\n  2. {BIG}\n",
        "",
    )


def test_the_request_from_stdin(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    request = {**REQUEST, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(request)))
    code, out, err = run(capsys, config, "-")
    assert (code, err) == (0, "")
    assert out == (
        "route 'smart': 4 prompt tokens (estimated), 100 completion tokens expected, "
        "costs in msat\n"
        "minimum quality 0.5, budget 5000 msat, needs vision\n"
        "  1. b/big  ~2616 msat  (worst 2616)  quality 0.9  (reference)\n"
        "  -  a/small  excluded: cannot do vision\n"
    )


def test_min_quality_raises_the_bar_like_the_header(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, config, str(write(tmp_path, REQUEST)), "--min-quality", "0.7")
    assert (code, err) == (0, "")
    assert out == (
        HEAD + f"minimum quality 0.7, budget 5000 msat\n  1. {BIG}\n"
        "  -  a/small  excluded: quality 0.6 is below 0.7\n"
    )


@pytest.mark.parametrize(
    ("route", "value", "message"),
    [
        ("smart", "0.99", "--min-quality '0.99': route 'smart' accepts from 0.5 to 0.95.\n"),
        ("smart", "0.4", "--min-quality '0.4': route 'smart' accepts from 0.5 to 0.95.\n"),
        ("smart", "high", "--min-quality 'high': route 'smart' accepts from 0.5 to 0.95.\n"),
        ("smart", "NaN", "--min-quality 'NaN': route 'smart' accepts from 0.5 to 0.95.\n"),
        ("fixed", "0.5", "--min-quality '0.5': route 'fixed' allows no override.\n"),
    ],
)
def test_a_min_quality_the_route_does_not_accept(
    tmp_path: Path,
    config: Path,
    capsys: pytest.CaptureFixture[str],
    route: str,
    value: str,
    message: str,
) -> None:
    request = write(tmp_path, {**REQUEST, "model": route})
    assert run(capsys, config, str(request), "--min-quality", value) == (1, "", message)


def test_a_budget_can_only_lower_the_routes(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request = str(write(tmp_path, REQUEST))
    code, out, _ = run(capsys, config, request, "--budget", "9000")
    assert (code, out.splitlines()[1]) == (0, "minimum quality 0.5, budget 5000 msat")
    code, out, _ = run(capsys, config, request, "--budget", "1000")
    assert code == 0
    assert out == (
        HEAD + f"minimum quality 0.5, budget 1000 msat\n  1. {SMALL}  (reference)\n"
        "  -  b/big  excluded: worst case 2628 msat exceeds the budget of 1000 msat\n"
    )
    assert run(capsys, config, request, "--budget", "-5") == (
        1,
        "",
        "--budget '-5': a whole number of 'smart''s unit.\n",
    )


def test_when_nothing_fits_the_explanation_still_comes_and_the_exit_is_1(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, config, str(write(tmp_path, REQUEST)), "--budget", "100")
    assert code == 1
    assert out == (
        HEAD + "minimum quality 0.5, budget 100 msat\n"
        "  -  a/small  excluded: worst case 203.5 msat exceeds the budget of 100 msat\n"
        "  -  b/big  excluded: worst case 2628 msat exceeds the budget of 100 msat\n"
        "nothing fits: the router answers 400 no_fitting_deployment\n"
    )
    assert out.endswith("nothing fits: the router answers 400 no_fitting_deployment\n")
    assert err == ""  # the explanation once, not repeated on stderr


def test_json(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    request = {**REQUEST, "tools": [{"type": "function", "function": {"name": "f"}}]}
    code, out, err = run(
        capsys, config, str(write(tmp_path, request)), "--json", "--min-quality", "0.6"
    )
    assert (code, err) == (0, "")
    small = {
        "deployment": "a/small",
        "provider": "a",
        "model": "small",
        "quality": "0.6",
        "estimate": "210",  # 20 prompt tokens: 4 + (12 + 49 bytes of tool JSON) / 4
        "worst_case": "210",
        "price": {
            "unit": "msat",
            "per": "token",
            "prompt": "0.5",
            "completion": "2",
            "request": "0",
        },
    }
    big = {
        "deployment": "b/big",
        "provider": "b",
        "model": "big",
        "quality": "0.9",
        "estimate": "2680",
        "worst_case": "2680",
        "price": {
            "unit": "sat",
            "per": "token",
            "prompt": "0.004",
            "completion": "0.016",
            "request": "1",
        },
    }
    assert json.loads(out) == {
        "route": "smart",
        "unit": "msat",
        "prompt_tokens": 20,
        "completion_tokens": 100,
        "min_quality": "0.6",
        "budget": 5000,
        "needs": ["tools"],
        "ranked": [small, big],
        "excluded": [],
        "reference": big,
        "error": None,
    }


def test_json_when_nothing_fits(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request = {**REQUEST, "max_tokens": 7995}  # 7 + 7995 > small's window of 8000
    code, out, err = run(capsys, config, str(write(tmp_path, request)), "--json")
    assert code == 1
    data = json.loads(out)
    assert [(c["deployment"], c["reason"]) for c in data["excluded"]] == [
        ("a/small", "context window 8000 < 7 prompt + 7995 completion tokens"),
        ("b/big", "worst case 128948 msat exceeds the budget of 5000 msat"),
    ]
    assert (data["ranked"], data["reference"]) == ([], None)
    assert data["error"] == {
        "status": 400,
        "type": "invalid_request_error",
        "code": "no_fitting_deployment",
        "message": data["error"]["message"],
    }
    assert data["error"]["message"].startswith(
        "No deployment of route 'smart' fits this request: a/small: context"
    )
    assert err == ""


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        (
            {**REQUEST, "model": "nope"},
            "model 'nope' names no cost route, chain, model or entry (routes: smart, fixed; "
            "chains: plain)",
        ),
        (
            {**REQUEST, "model": "smrt"},
            "model 'smrt' names no cost route, chain, model or entry (did you mean 'smart'?) "
            "(routes: smart, fixed; chains: plain)",
        ),
        ({"messages": []}, "model None: give the name of a cost route or a chain"),
        ({**REQUEST, "model": 7}, "model 7: give the name of a cost route or a chain"),
        ("[1, 2]", "{path}: a request must be a JSON object"),
        (
            "{nope",
            "{path}: not valid JSON: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)",
        ),
    ],
)
def test_a_request_that_cannot_be_explained(
    tmp_path: Path,
    config: Path,
    capsys: pytest.CaptureFixture[str],
    request_body: Any,
    message: str,
) -> None:
    path = write(tmp_path, request_body)
    assert run(capsys, config, str(path)) == (1, "", message.format(path=path) + "\n")


def test_a_missing_or_binary_request_file(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.json"
    assert run(capsys, config, str(missing)) == (
        1,
        "",
        f"{missing}: cannot read: No such file or directory\n",
    )
    binary = tmp_path / "binary.json"
    binary.write_bytes(b'{"model": "\xff"}')
    assert run(capsys, config, str(binary)) == (1, "", f"{binary}: not UTF-8 text (at byte 11)\n")


def test_an_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG.replace('provider = "b"', 'provider = "z"'), encoding="utf-8")
    code, out, err = run(capsys, bad, str(write(tmp_path, REQUEST)))
    assert (code, out) == (1, "")
    assert err == (f"{bad}: invalid config\n  routes.smart.deployments.1: unknown provider 'z'\n")
    assert "DISTINCTIVE" not in err


def test_the_command_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["explain", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: waterfall-asgi explain [-h] --config CONFIG")
    for option in ("--min-quality", "--budget", "--json", "request"):
        assert option in out


CHAINS = """\
default_chain = "fast"

[providers.openai]
base_url = "http://127.0.0.1:9/v1"

[providers.groq]
base_url = "http://127.0.0.1:10/v1"

[chains]
fast = ["openai/gpt-4o-mini", "groq/llama-3.1-8b-instant"]
"""


def test_a_chain_lists_its_entries_and_says_cooldowns_are_not_visible(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, CHAINS, "router.toml")
    code, out, err = run(capsys, config, str(write(tmp_path, {"model": "fast", "messages": []})))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[:3] == [
        "chain 'fast': 2 entries, tried in this order until one answers",
        "  1. openai/gpt-4o-mini         tried unless cooling",
        "  2. groq/llama-3.1-8b-instant  tried unless cooling",
    ]
    # The in-memory store lives in each router process: this one cannot see it, and says so.
    assert " ".join(lines[3:]).startswith(
        "cooldowns: this config keeps them in each router process's memory, where no other "
        "process can see them"
    )
    # No model: the default chain; a model name: its entries; one entry by its key.
    assert run(capsys, config, str(write(tmp_path, {"messages": []})))[1] == out
    by_model = run(capsys, config, str(write(tmp_path, {"model": "gpt-4o-mini"})))[1]
    assert by_model.startswith("model 'gpt-4o-mini': 1 entry, tried in this order")
    by_key = run(capsys, config, str(write(tmp_path, {"model": "groq/llama-3.1-8b-instant"})))[1]
    assert by_key.startswith("entry 'groq/llama-3.1-8b-instant': 1 entry")


def test_a_chain_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, CHAINS, "router.toml")
    code, out, err = run(capsys, config, str(write(tmp_path, {"model": "fast"})), "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert (data["kind"], data["name"], data["cooldowns"]) == ("chain", "fast", None)
    assert [(e["entry"], e["cooling_until"]) for e in data["entries"]] == [
        ("openai/gpt-4o-mini", None),
        ("groq/llama-3.1-8b-instant", None),
    ]
    assert "no other process can see them" in data["note"]


def test_quality_and_budget_are_for_cost_routes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, CHAINS, "router.toml")
    request = str(write(tmp_path, {"model": "fast"}))
    assert run(capsys, config, request, "--budget", "5") == (
        1,
        "",
        "--min-quality and --budget are for cost routes only\n",
    )


def test_cooling_entries_are_shown_with_their_deadline() -> None:
    from waterfall_asgi._chain_explain import chain_plan
    from waterfall_asgi.config import load_config

    config = load_config(
        {"providers": {"a": {"base_url": "http://a"}}, "chains": {"c": ["a/x", "a/y"]}}
    )
    now = 1_800_000_000.0
    plan = chain_plan(config, "c", {"a/x": now + 42, "a/y": now - 1}, "redis://r:6379/0", now)
    assert plan is not None
    assert plan.explain().splitlines() == [
        "chain 'c': 2 entries, tried in this order until one answers",
        "  1. a/x  cooling until 2027-01-15 08:00:42 UTC (42s from now): skipped",
        "  2. a/y  would be tried",
        "cooldowns: read from redis://r:6379/0",
    ]
    everything = chain_plan(config, "c", {"a/x": now + 5, "a/y": now + 9}, "redis", now)
    assert everything is not None
    assert everything.explain().endswith(
        "every entry is cooling: a request now gets 503 all_providers_exhausted"
    )


class SharedStore:
    """A stand-in for a shared cooldown store: opened, read and closed by ``explain``."""

    url = "redis://:***@cache:6379/0"

    def __init__(self, deadlines: dict[str, float], connected: bool = True) -> None:
        self.deadlines, self.connected, self.calls = deadlines, connected, []

    async def open(self) -> None:
        self.calls.append("open")

    async def snapshot(self) -> dict[str, float]:
        self.calls.append("snapshot")
        return dict(self.deadlines)

    async def close(self) -> None:
        self.calls.append("close")


def test_a_shared_store_is_read_and_closed() -> None:
    import asyncio

    from waterfall_asgi._chain_explain import NO_LIVE_STATE, read_cooldowns
    from waterfall_asgi.cooldown import InMemoryCooldownStore

    store = SharedStore({"a/x": 1_800_000_042.0})
    assert asyncio.run(read_cooldowns(store)) == (
        {"a/x": 1_800_000_042.0},
        "the shared store at redis://:***@cache:6379/0",
    )
    assert store.calls == ["open", "snapshot", "close"]
    down = SharedStore({}, connected=False)
    cooling, source = asyncio.run(read_cooldowns(down))
    assert cooling is None
    assert source.startswith("cooldowns: the shared store at redis://:***@cache:6379/0 did not")
    assert down.calls == ["open", "close"]
    assert asyncio.run(read_cooldowns(InMemoryCooldownStore())) == (None, NO_LIVE_STATE)


def test_a_chain_with_cooldowns_shared_through_redis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_url: str, redis_prefix: str
) -> None:
    # A router that saw a 429 from openai cooled it in Redis; explain, another process, sees it.
    import asyncio
    import time

    from waterfall_asgi import RedisCooldownStore

    until = time.time() + 600

    async def cool() -> None:
        store = RedisCooldownStore(redis_url, prefix=redis_prefix)
        await store.open()
        try:
            assert store.connected
            await store.extend("openai/gpt-4o-mini", until)
        finally:
            await store.close()

    asyncio.run(cool())
    config = write(
        tmp_path,
        CHAINS + f'\n[cooldowns]\nurl = "{redis_url}"\nprefix = "{redis_prefix}"\n',
        "router.toml",
    )
    code, out, err = run(capsys, config, str(write(tmp_path, {"model": "fast"})))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "chain 'fast': 2 entries, tried in this order until one answers"
    assert re.fullmatch(
        r"  1\. openai/gpt-4o-mini         cooling until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC "
        r"\(\d+s from now\): skipped",
        lines[1],
    )
    assert lines[2] == "  2. groq/llama-3.1-8b-instant  would be tried"
    assert lines[3].startswith("cooldowns: read from the shared store at redis://")
    as_json = run(capsys, config, str(write(tmp_path, {"model": "fast"})), "--json")[1]
    entries = json.loads(as_json)["entries"]
    assert entries[0]["cooling_until"] == pytest.approx(until, abs=0.01)
    assert entries[1]["cooling_until"] is None


def test_entries_whose_provider_speaks_other_apis_say_which() -> None:
    from waterfall_asgi._chain_explain import chain_plan
    from waterfall_asgi.config import load_config

    config = load_config(
        {
            "providers": {
                "a": {"base_url": "http://a"},
                "b": {"base_url": "http://b", "apis": ["messages", "chat"]},
            },
            "chains": {"c": ["a/x", "b/y"]},
        }
    )
    plan = chain_plan(config, "c", {}, "redis://r:6379/0", 1_800_000_000.0)
    assert plan is not None
    assert plan.explain().splitlines()[1:3] == [
        "  1. a/x  would be tried",
        "  2. b/y  would be tried (speaks messages, chat)",
    ]
    entries = json.loads(plan.to_json())["entries"]
    assert [e["apis"] for e in entries] == [["chat"], ["messages", "chat"]]
