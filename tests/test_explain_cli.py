"""``waterfall-asgi explain --config FILE REQUEST.json``: the ranking a request would get."""

from __future__ import annotations

import io
import json
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
    )
    assert err == (
        "No deployment of route 'smart' fits this request: a/small: worst case 203.5 msat "
        "exceeds the budget of 100 msat; b/big: worst case 2628 msat exceeds the budget of "
        "100 msat.\n"
    )


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
        "message": err.rstrip("\n"),
    }
    assert err.startswith("No deployment of route 'smart' fits this request: a/small: context")


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({**REQUEST, "model": "plain"}, "model 'plain' names no cost route (routes: smart, fixed)"),
        ({**REQUEST, "model": "nope"}, "model 'nope' names no cost route (routes: smart, fixed)"),
        ({"messages": []}, "model None names no cost route (routes: smart, fixed)"),
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
