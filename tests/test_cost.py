"""Cost ranking: exact estimates, every exclusion and its reason, ties, the reference, the error
when nothing fits, the prompt estimate and the readable explanation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest

from waterfall_asgi.config import Price, RouterConfig
from waterfall_asgi.cost import (
    Candidate,
    NoFittingDeployment,
    Ranking,
    completion_limit,
    convert,
    estimate_prompt_tokens,
    rank,
    required_capabilities,
)

D = Decimal
ASK = {"model": "r", "messages": [{"role": "user", "content": "hi"}]}


def config(
    deployments: list[Any],
    *,
    models: Mapping[str, Any] | None = None,
    rates: list[dict[str, Any]] | None = None,
    chains: Mapping[str, list[Any]] | None = None,
    **route: Any,
) -> RouterConfig:
    """A config with providers a, b, c, d and one route ``r`` over ``deployments``."""
    return RouterConfig.model_validate(
        {
            "providers": {p: {"base_url": f"http://127.0.0.1:9/{p}"} for p in "abcd"},
            "models": models or {},
            "rates": rates or [],
            "chains": chains or {},
            "routes": {"r": {"deployments": deployments, **route}},
        }
    )


def dep(key: str, unit: str = "msat", per: str = "token", **price: Any) -> dict[str, Any]:
    provider, model = key.split("/")
    return {"provider": provider, "model": model, "price": {"unit": unit, "per": per, **price}}


def tokens(n: int) -> Any:
    """An estimator that says ``n`` prompt tokens whatever the request."""
    return lambda payload: n


def keys(candidates: tuple[Candidate, ...] | list[Candidate]) -> list[str]:
    return [c.deployment.key for c in candidates]


def reasons(ranking: Ranking) -> dict[str, str | None]:
    return {c.deployment.key: c.excluded for c in ranking.excluded}


# -- exact arithmetic --------------------------------------------------------------------------
def test_per_token_prices_and_the_request_fee_are_exact() -> None:
    cfg = config([dep("a/m", prompt="0.15", completion="0.6", request=1)])
    r = rank(cfg, "r", {**ASK, "max_tokens": 10}, estimator=tokens(1000))
    (c,) = r.ranked
    assert (c.estimate, c.worst_case) == (D("157.0"), D("157.0"))
    assert (r.prompt_tokens, r.completion_tokens, r.unit) == (1000, 10, "msat")
    assert r.plan == [cfg.routes["r"].deployments[0]]
    assert r.excluded == ()


def test_per_million_prices_are_exact_fractions() -> None:
    cfg = config([dep("a/m", "usd_micro", "million", prompt="150", completion="600", request=2)])
    (c,) = rank(cfg, "r", {**ASK, "max_tokens": 10}, estimator=tokens(1000)).ranked
    # (1000 x 150 + 10 x 600) / 1e6 + 2
    assert c.estimate == D("2.156")
    assert str(c.estimate) == "2.156"


def test_without_max_tokens_the_routes_default_completion_is_expected() -> None:
    cfg = config(
        [dep("a/m", prompt="1", completion="2")],
        models={"m": {"context_window": 5000}},
        default_completion_tokens=100,
    )
    r = rank(cfg, "r", ASK, estimator=tokens(1000))
    assert r.completion_tokens == 100
    # estimate: 1000 + 100 x 2; worst: the reply may fill the window: 1000 + 4000 x 2
    assert (r.ranked[0].estimate, r.ranked[0].worst_case) == (D(1200), D(9000))


def test_without_max_tokens_or_window_the_worst_case_is_unbounded() -> None:
    cfg = config([dep("a/m", prompt="1", completion="2")])
    (c,) = rank(cfg, "r", ASK, estimator=tokens(10)).ranked
    assert (c.estimate, c.worst_case) == (D(10 + 256 * 2), None)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"max_tokens": 7}, 7),
        ({"max_completion_tokens": 9, "max_tokens": 7}, 9),
        ({"max_completion_tokens": None, "max_tokens": 7}, 7),
        ({"max_completion_tokens": 0}, 0),
        ({"max_tokens": True}, 256),
        ({"max_tokens": -1}, 256),
        ({"max_tokens": "12"}, 256),
        ({"max_tokens": 1.5}, 256),
    ],
)
def test_which_reply_limit_counts(extra: dict[str, Any], expected: int) -> None:
    cfg = config([dep("a/m", completion="1")])
    r = rank(cfg, "r", {**ASK, **extra}, estimator=tokens(0))
    assert r.completion_tokens == expected
    assert r.ranked[0].estimate == D(expected)
    assert r.ranked[0].worst_case == (D(expected) if expected != 256 else None)


def test_prices_in_another_unit_convert_through_a_configured_rate() -> None:
    cfg = config(
        [dep("a/m", "sat", prompt="0.002"), dep("b/m", "msat", prompt="1.5")],
        rates=[{"source": "sat", "target": "msat", "rate": "1000"}],
        unit="msat",
    )
    r = rank(cfg, "r", {**ASK, "max_tokens": 0}, estimator=tokens(100))
    # a: 100 x 0.002 sat = 0.2 sat = 200 msat; b: 150 msat
    assert [(c.deployment.key, c.estimate) for c in r.ranked] == [
        ("b/m", D("150.0")),
        ("a/m", D("200.0000")),
    ]


def test_the_default_unit_is_the_first_priced_candidates() -> None:
    cfg = config(
        [{"provider": "a", "model": "none"}, dep("b/m", "sat", prompt="1"), dep("c/m", "sat")],
    )
    r = rank(cfg, "r", ASK, estimator=tokens(3))
    assert r.unit == "sat"
    assert reasons(r) == {"a/none": "no price"}


def test_a_missing_rate_excludes_with_the_reason_and_no_inverse_is_guessed() -> None:
    cfg = config(
        [dep("a/m", "msat", prompt="1"), dep("b/m", "sat", prompt="1")],
        rates=[{"source": "msat", "target": "sat", "rate": "0.001"}],  # the wrong direction
    )
    r = rank(cfg, "r", ASK, estimator=tokens(3))
    assert keys(r.ranked) == ["a/m"]
    assert reasons(r) == {"b/m": "no rate from 'sat' to 'msat' in the config's rates"}
    assert r.excluded[0].estimate is None


def test_convert() -> None:
    cfg = config([], rates=[{"source": "usd", "target": "usd_micro", "rate": "1000000"}])
    assert convert(D("0.25"), "usd", "usd_micro", cfg) == D(250000)
    assert convert(D("3.5"), "msat", "msat", cfg) == D("3.5")
    with pytest.raises(LookupError, match=r"^no rate from 'usd_micro' to 'usd' in the config"):
        convert(D(1), "usd_micro", "usd", cfg)


def test_imported_prices_fill_in_but_never_override_config_prices() -> None:
    cfg = config([dep("a/m", prompt="5"), {"provider": "b", "model": "m"}])
    imported = {"a/m": Price(prompt=D(1)), "b/m": Price(prompt=D(2))}
    r = rank(cfg, "r", {**ASK, "max_tokens": 0}, prices=imported, estimator=tokens(1))
    assert [(c.deployment.key, c.estimate) for c in r.ranked] == [("b/m", D(2)), ("a/m", D(5))]


def test_a_route_without_deployments_takes_every_priced_one_in_config_order() -> None:
    cfg = config(
        [],
        chains={"x": [dep("c/m", prompt="1"), "a/unpriced", "b/imported"]},
    )
    r = rank(cfg, "r", ASK, prices={"b/imported": Price(prompt=D(1))}, estimator=tokens(1))
    assert keys(r.ranked) == ["c/m", "b/imported"]  # tied: config order
    assert r.excluded == ()


def test_a_price_listed_elsewhere_in_the_config_is_used() -> None:
    cfg = config(["a/m"], chains={"x": [dep("a/m", prompt="3")]})
    assert rank(cfg, "r", ASK, estimator=tokens(2)).ranked[0].estimate == D(6)


# -- exclusions --------------------------------------------------------------------------------
def test_quality_below_the_bar_is_excluded_and_the_bar_can_be_raised_per_request() -> None:
    cfg = config(
        [dep("a/lo"), dep("b/hi", prompt="1")],
        models={"lo": {"quality": "0.5"}, "hi": {"quality": "0.9"}},
        min_quality="0.5",
    )
    assert keys(rank(cfg, "r", ASK).ranked) == ["a/lo", "b/hi"]
    r = rank(cfg, "r", ASK, min_quality=D("0.7"))
    assert keys(r.ranked) == ["b/hi"]
    assert reasons(r) == {"a/lo": "quality 0.5 is below 0.7"}
    assert r.min_quality == D("0.7")
    assert r.excluded[0].estimate == D(0)  # still estimated: only the bar keeps it out


def test_a_model_without_info_has_quality_zero_and_no_capabilities() -> None:
    cfg = config([dep("a/m")], min_quality="0.1")
    with pytest.raises(NoFittingDeployment) as info:
        rank(cfg, "r", ASK)
    assert reasons(info.value.ranking) == {"a/m": "quality 0 is below 0.1"}


TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


@pytest.mark.parametrize(
    ("extra", "missing"),
    [
        ({"tools": TOOLS}, "tools"),
        ({"functions": [{"name": "f"}]}, "tools"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "?"}, IMAGE]}]},
            "vision",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "input_image"}]}]}, "vision"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "json_schema"),
        ({"response_format": {"type": "json_object"}}, "json_schema"),
        (
            {
                "tools": TOOLS,
                "response_format": {"type": "json_schema"},
                "messages": [{"role": "user", "content": [IMAGE]}],
            },
            "json_schema, tools, vision",
        ),
    ],
)
def test_a_missing_capability_is_excluded(extra: dict[str, Any], missing: str) -> None:
    cfg = config(
        [dep("a/plain"), dep("b/able", prompt="1")],
        models={"able": {"capabilities": ["tools", "vision", "json_schema"]}},
    )
    r = rank(cfg, "r", {**ASK, **extra})
    assert keys(r.ranked) == ["b/able"]
    assert reasons(r) == {"a/plain": f"cannot do {missing}"}
    assert r.needs == frozenset(missing.split(", "))


def test_a_plain_request_needs_nothing() -> None:
    plain = {
        **ASK,
        "response_format": {"type": "text"},
        "tools": [],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}, "junk"],
    }
    assert required_capabilities(plain) == frozenset()
    assert required_capabilities({"messages": "not a list"}) == frozenset()


def test_the_context_window_must_hold_the_prompt_and_the_expected_reply() -> None:
    cfg = config(
        [dep("a/small"), dep("b/exact", prompt="1"), dep("c/big", prompt="2")],
        models={
            "small": {"context_window": 1099},
            "exact": {"context_window": 1100},
            "big": {"context_window": 100000},
        },
    )
    r = rank(cfg, "r", {**ASK, "max_tokens": 200}, estimator=tokens(900))
    assert keys(r.ranked) == ["b/exact", "c/big"]
    assert reasons(r) == {"a/small": "context window 1099 < 900 prompt + 200 completion tokens"}


def test_the_budget_bounds_the_worst_case_exactly() -> None:
    cfg = config(
        [
            dep("a/cheap", prompt="1", completion="1"),
            dep("b/dear", prompt="1", completion="2", request="0.5"),
        ],
        budget=30,
    )
    # a: 10 + 20 = 30, exactly the budget; b: 10 + 40 + 0.5 = 50.5
    r = rank(cfg, "r", {**ASK, "max_tokens": 20}, estimator=tokens(10))
    assert keys(r.ranked) == ["a/cheap"]
    assert reasons(r) == {"b/dear": "worst case 50.5 msat exceeds the budget of 30 msat"}
    assert r.budget == 30
    # a request's own budget replaces the route's
    r = rank(cfg, "r", {**ASK, "max_tokens": 20}, estimator=tokens(10), budget=51)
    assert keys(r.ranked) == ["a/cheap", "b/dear"]
    with pytest.raises(NoFittingDeployment) as info:
        rank(cfg, "r", {**ASK, "max_tokens": 20}, estimator=tokens(10), budget=29)
    assert reasons(info.value.ranking)["a/cheap"] == (
        "worst case 30 msat exceeds the budget of 29 msat"
    )


def test_the_worst_case_uses_the_window_when_no_reply_limit_is_given() -> None:
    cfg = config(
        [dep("a/w290", completion="1"), dep("b/w291", completion="1"), dep("c/free")],
        models={"w290": {"context_window": 290}, "w291": {"context_window": 291}},
        budget=250,
        default_completion_tokens=10,
    )
    r = rank(cfg, "r", ASK, estimator=tokens(40))
    assert [(c.deployment.key, c.estimate, c.worst_case) for c in r.ranked] == [
        ("a/w290", D(10), D(250))
    ]
    assert reasons(r) == {
        "b/w291": "worst case 251 msat exceeds the budget of 250 msat",
        "c/free": "no bound on its cost (no max_tokens, no context window) for the budget",
    }


def test_a_zero_budget_admits_only_free_deployments() -> None:
    cfg = config([dep("a/m", request="0.001"), dep("b/m")], budget=0)
    r = rank(cfg, "r", {**ASK, "max_tokens": 5})
    assert keys(r.ranked) == ["b/m"]
    assert reasons(r) == {"a/m": "worst case 0.001 msat exceeds the budget of 0 msat"}


def test_reasons_are_checked_in_order_and_only_the_first_is_given() -> None:
    cfg = config(
        [dep("a/m"), dep("b/ok")],
        models={
            "m": {"quality": "0.1", "context_window": 10},
            "ok": {"quality": "1", "capabilities": ["tools"]},
        },
        min_quality="0.5",
        budget=0,
    )
    r = rank(cfg, "r", {**ASK, "tools": TOOLS, "max_tokens": 100})
    assert reasons(r) == {"a/m": "quality 0.1 is below 0.5"}
    assert keys(r.ranked) == ["b/ok"]


# -- ties --------------------------------------------------------------------------------------
def test_ties_go_to_the_higher_quality_then_to_config_order() -> None:
    cfg = config(
        [dep("a/lo", prompt="1"), dep("b/hi", prompt="1"), dep("c/hi", prompt="1"), dep("d/x")],
        models={"lo": {"quality": "0.5"}, "hi": {"quality": "0.8"}, "x": {"quality": "0"}},
    )
    r = rank(cfg, "r", {**ASK, "max_tokens": 3}, estimator=tokens(4))
    assert keys(r.ranked) == ["d/x", "b/hi", "c/hi", "a/lo"]
    assert [c.order for c in r.ranked] == [3, 1, 2, 0]


# -- the reference -----------------------------------------------------------------------------
def test_the_reference_defaults_to_the_dearest_fitting_candidate() -> None:
    cfg = config(
        [
            dep("a/m", prompt="1"),
            dep("b/m", prompt="3"),
            dep("c/m", prompt="3"),
            dep("d/m", prompt="9"),
        ],
        models={"m": {"quality": "0.5"}},
        budget=20,
    )
    r = rank(cfg, "r", {**ASK, "max_tokens": 0}, estimator=tokens(5))
    assert keys(r.ranked) == ["a/m", "b/m", "c/m"]
    assert r.reference is not None
    assert r.reference.deployment.key == "b/m"  # tied with c/m: config order; d/m does not fit


def test_a_dearest_tie_goes_to_the_higher_quality() -> None:
    cfg = config(
        [dep("a/lo", prompt="3"), dep("b/hi", prompt="3")],
        models={"lo": {"quality": "0.5"}, "hi": {"quality": "0.8"}},
    )
    r = rank(cfg, "r", ASK)
    assert r.reference is r.ranked[0]
    assert r.reference.deployment.key == "b/hi"


def test_a_configured_reference_among_the_candidates_even_if_excluded() -> None:
    cfg = config(
        [dep("a/m", prompt="1"), dep("b/big", prompt="10")],
        models={"big": {"quality": "1"}},
        reference="b/big",
        budget=5,
    )
    r = rank(cfg, "r", {**ASK, "max_tokens": 0}, estimator=tokens(1))
    assert keys(r.ranked) == ["a/m"]
    assert r.reference is r.excluded[0]
    assert (r.reference.estimate, r.reference.quality) == (D(10), D(1))


def test_a_configured_reference_outside_the_candidates_is_still_estimated() -> None:
    cfg = config(
        [dep("a/m", prompt="1")],
        chains={"x": [dep("c/frontier", "sat", prompt="0.01")]},
        rates=[{"source": "sat", "target": "msat", "rate": "1000"}],
        reference="c/frontier",
    )
    r = rank(cfg, "r", {**ASK, "max_tokens": 0}, estimator=tokens(2))
    assert r.reference is not None
    assert r.reference.deployment.key == "c/frontier"
    assert (r.reference.estimate, r.reference.order, r.reference.excluded) == (D("20.00"), 1, None)
    assert r.reference.price == Price(unit="sat", prompt=D("0.01"))
    assert r.reference not in r.ranked + r.excluded


# -- nothing fits ------------------------------------------------------------------------------
def test_nothing_fits_is_a_400_naming_every_exclusion() -> None:
    cfg = config(
        [dep("a/m"), {"provider": "b", "model": "m"}],
        models={"m": {"quality": "0.2"}},
        min_quality="0.3",
    )
    with pytest.raises(NoFittingDeployment) as info:
        rank(cfg, "r", ASK)
    err = info.value
    assert (err.status, err.type, err.code, err.param) == (
        400,
        "invalid_request_error",
        "no_fitting_deployment",
        None,
    )
    assert err.message == (
        "No deployment of route 'r' fits this request: "
        "a/m: quality 0.2 is below 0.3; b/m: no price."
    )
    assert json.loads(err.body())["error"]["code"] == "no_fitting_deployment"
    assert err.ranking.ranked == ()
    assert keys(err.ranking.excluded) == ["a/m", "b/m"]
    assert err.ranking.reference is None


def test_a_route_with_no_candidate_at_all() -> None:
    cfg = config([])
    with pytest.raises(NoFittingDeployment) as info:
        rank(cfg, "r", ASK)
    assert info.value.message == "No deployment of route 'r' fits this request: none."
    assert info.value.ranking.unit == "unit"


# -- the prompt estimate -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({}, 0),
        ({"messages": [{"role": "user", "content": "Hello there!"}]}, 4 + 3),
        ({"messages": [{"role": "user", "content": "éééé"}]}, 4 + 2),  # 8 bytes of UTF-8
        ({"messages": [{"role": "user", "name": "bob", "content": "abcd"}]}, 4 + 2),
        (
            {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "a"}]},
            8 + 1,
        ),
        (  # text parts count, an image's URL does not
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "abcdefgh"}, IMAGE]}
                ]
            },
            4 + 2,
        ),
        (  # an assistant's tool call: its name and arguments (3 + 7 bytes)
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "get", "arguments": '{"a":1}'},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                ]
            },
            8 + 4,  # 15 bytes
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}
                ]
            },
            4 + 1,
        ),
        ({"tools": [{"name": "f"}]}, 4),  # '[{"name": "f"}]': 15 bytes of JSON
        ({"functions": [{"name": "f"}], "tools": []}, 4),
        ({"prompt": "abcdefghij"}, 3),
        ({"prompt": ["abcd", "efgh"]}, 2),
        ({"input": ["abcd", "abcdefgh"]}, 3),
        ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "abcde"}]}]}, 2),
        ({"messages": "abcd"}, 1),
    ],
)
def test_estimate_prompt_tokens(payload: dict[str, Any], expected: int) -> None:
    assert estimate_prompt_tokens(payload) == expected


def test_the_default_estimator_is_used() -> None:
    cfg = config([dep("a/m", prompt="1")])
    r = rank(cfg, "r", {"model": "r", "messages": [{"role": "user", "content": "Hello there!"}]})
    assert (r.prompt_tokens, r.ranked[0].estimate) == (7, D(7))


# -- explain -----------------------------------------------------------------------------------
def test_explain_gives_the_inputs_the_ranking_and_every_exclusion() -> None:
    cfg = config(
        [
            dep("a/small", prompt="0.5", completion="1"),
            dep("b/mid", prompt="1", completion="2", request="0.25"),
            dep("c/dear", prompt="4", completion="8"),
            dep("d/weak"),
            dep("a/alt", prompt="2", completion="2"),
        ],
        models={
            "small": {"quality": "0.6", "capabilities": ["tools"]},
            "mid": {"quality": "0.8", "capabilities": ["tools"], "context_window": 2000},
            "dear": {"quality": "0.95", "capabilities": ["tools"], "context_window": 2000},
            "weak": {"quality": "0.1", "capabilities": ["tools"]},
            "alt": {"quality": "0.7", "capabilities": ["tools"], "context_window": 2000},
        },
        min_quality="0.5",
        budget=4000,
    )
    r = rank(cfg, "r", {**ASK, "tools": TOOLS}, estimator=tokens(100))
    assert r.explain() == (
        "route 'r': 100 prompt tokens (estimated), 256 completion tokens expected, costs in msat\n"
        "minimum quality 0.5, budget 4000 msat, needs tools\n"
        "  1. b/mid  ~612.25 msat  (worst 3900.25)  quality 0.8\n"
        "  2. a/alt  ~712 msat  (worst 4000)  quality 0.7  (reference)\n"
        "  -  a/small  excluded: no bound on its cost (no max_tokens, no context window) "
        "for the budget\n"
        "  -  c/dear  excluded: worst case 15600 msat exceeds the budget of 4000 msat\n"
        "  -  d/weak  excluded: quality 0.1 is below 0.5"
    )


def test_explain_names_a_reference_outside_the_ranking_and_an_unbounded_worst_case() -> None:
    cfg = config(
        [dep("a/m", "usd_micro", "million", prompt="150", completion="600")],
        chains={
            "x": [dep("b/frontier", "usd_micro", "million", prompt="2500", completion="10000")]
        },
        reference="b/frontier",
    )
    r = rank(cfg, "r", ASK, estimator=tokens(1000))
    assert r.explain() == (
        "route 'r': 1000 prompt tokens (estimated), 256 completion tokens expected, "
        "costs in usd_micro\n"
        "minimum quality 0\n"
        "  1. a/m  ~0.3036 usd_micro  (worst -)  quality 0\n"
        "reference: b/frontier  ~5.06 usd_micro"
    )


# -- the other APIs' request shapes ------------------------------------------------------------
def test_the_estimate_reads_the_responses_and_messages_shapes() -> None:
    base = estimate_prompt_tokens({"input": "x" * 40})
    assert base == 10
    assert estimate_prompt_tokens({"input": "x" * 40, "instructions": "y" * 40}) == 20
    system = [{"type": "text", "text": "z" * 40}]
    assert estimate_prompt_tokens({"messages": [], "system": system}) == 10
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "a" * 40}]},
        {"type": "function_call_output", "call_id": "c1", "output": "b" * 40},
    ]
    assert estimate_prompt_tokens({"input": items}) == 20


def test_capabilities_are_read_in_every_apis_shape() -> None:
    anthropic_image = {"type": "image", "source": {"type": "base64", "data": "..."}}
    assert required_capabilities(
        {"messages": [{"role": "user", "content": [anthropic_image]}]}
    ) == {"vision"}
    responses_image = {"type": "input_image", "image_url": "https://example.com/a.png"}
    assert required_capabilities({"input": [{"role": "user", "content": [responses_image]}]}) == {
        "vision"
    }
    assert required_capabilities(
        {"input": "describe", "text": {"format": {"type": "json_schema"}}}
    ) == {"json_schema"}
    assert required_capabilities({"input": "plain", "text": {"format": {"type": "text"}}}) == set()


@pytest.mark.parametrize(
    ("payload", "limit"),
    [
        ({}, None),
        ({"max_tokens": 10}, 10),
        ({"max_completion_tokens": 20, "max_tokens": 10}, 20),
        ({"max_completion_tokens": None, "max_tokens": 10}, 10),
        ({"max_output_tokens": 30}, 30),
        ({"max_output_tokens": -1}, None),
        ({"max_output_tokens": 1.5}, None),
    ],
)
def test_the_completion_limit_is_read_under_each_apis_name(
    payload: dict[str, object], limit: int | None
) -> None:
    assert completion_limit(payload) == limit
