"""Properties of the cost ranking over random catalogs and requests.

A catalog is a handful of deployments with Decimal prices in a few units (per token or per
million, some imported rather than configured, some missing), a random set of exchange rates,
qualities (few levels, so ties happen), context windows and capabilities. The oracle computes
every estimate and worst case with :class:`fractions.Fraction`, by brute force, from the catalog
as drawn: the ranking must agree with it exactly.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from waterfall_asgi.config import Price, RouterConfig
from waterfall_asgi.cost import Candidate, NoFittingDeployment, Ranking, rank

UNITS = ["msat", "sat", "usd_micro"]
RATES = {  # the rates a catalog may have (each one drawn or not): (source, target) -> rate
    ("sat", "msat"): "1000",
    ("msat", "sat"): "0.001",
    ("usd_micro", "msat"): "1.7",
    ("msat", "usd_micro"): "0.6",
    ("sat", "usd_micro"): "0.59",
}
QUALITIES = ["0", "0.5", "0.7", "0.9"]
BARS = ["0", "0.5", "0.6", "0.7", "0.9", "1"]
CAPABILITIES = ["json_schema", "tools", "vision"]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


@dataclass(frozen=True)
class Entry:
    key: str
    price: dict[str, Any] | None
    imported: bool  # the price comes from a provider's list rather than the config
    info: dict[str, Any] | None  # the model's quality, window and capabilities (None: unknown)


@dataclass(frozen=True)
class Catalog:
    entries: tuple[Entry, ...]
    rates: frozenset[tuple[str, str]]
    default_completion: int

    def config(self, unit: str | None, min_quality: str | None, budget: int | None) -> Any:
        route: dict[str, Any] = {
            "deployments": [
                {"provider": e.key[0], "model": e.key[2:]}
                | ({"price": e.price} if e.price is not None and not e.imported else {})
                for e in self.entries
            ],
            "unit": unit,
            "budget": budget,
            "default_completion_tokens": self.default_completion,
        }
        if min_quality is not None:
            route["min_quality"] = min_quality
        return RouterConfig.model_validate(
            {
                "providers": {p: {"base_url": "http://127.0.0.1:9/v1"} for p in "abcd"},
                "models": {e.key[2:]: e.info for e in self.entries if e.info is not None},
                "rates": [
                    {"source": s, "target": t, "rate": RATES[s, t]} for s, t in sorted(self.rates)
                ],
                "routes": {"r": route},
            }
        )

    def prices(self) -> dict[str, Price]:
        return {
            e.key: Price.model_validate(e.price)
            for e in self.entries
            if e.price is not None and e.imported
        }


@dataclass(frozen=True)
class Request:
    prompt: int
    limit: int | None
    needs: frozenset[str]

    def payload(self) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": "hello"}]
        if "vision" in self.needs:
            content.append(IMAGE)
        payload: dict[str, Any] = {"model": "r", "messages": [{"role": "user", "content": content}]}
        if "tools" in self.needs:
            payload["tools"] = TOOLS
        if "json_schema" in self.needs:
            payload["response_format"] = {"type": "json_schema", "json_schema": {"name": "x"}}
        if self.limit is not None:
            payload["max_tokens"] = self.limit
        return payload


amounts = st.builds(
    lambda n, k: Decimal(n).scaleb(-k), st.integers(0, 20) | st.integers(0, 5000), st.integers(0, 3)
)
prices = st.fixed_dictionaries(
    {
        "unit": st.sampled_from(["msat", "msat", "sat", "usd_micro"]),
        "per": st.sampled_from(["token", "million"]),
        "prompt": amounts,
        "completion": amounts,
        "request": amounts,
    }
)
infos = st.fixed_dictionaries(
    {
        "quality": st.sampled_from(QUALITIES),
        "context_window": st.none() | st.integers(1, 4000) | st.integers(4000, 200_000),
        "capabilities": st.sets(st.sampled_from(CAPABILITIES), min_size=1).map(sorted)
        | st.just(CAPABILITIES),
    }
)


@st.composite
def catalogs(draw: st.DrawFn) -> Catalog:
    entries: list[Entry] = []
    for i in range(draw(st.integers(1, 6))):
        # an entry may copy an earlier one's price or model info: exact ties are common
        price = draw(_new_copied_or_none(prices, [e.price for e in entries]))
        info = draw(_new_copied_or_none(infos, [e.info for e in entries]))
        entries.append(
            Entry(f"{draw(st.sampled_from('abcd'))}/m{i}", price, draw(st.booleans()), info)
        )
    rates = {pair for pair in sorted(RATES) if draw(st.sampled_from([True, True, True, False]))}
    return Catalog(tuple(entries), frozenset(rates), draw(st.integers(0, 600)))


def _new_copied_or_none(
    new: st.SearchStrategy[dict[str, Any]], earlier: list[dict[str, Any] | None]
) -> st.SearchStrategy[dict[str, Any] | None]:
    """Mostly a new value, else one of ``earlier`` (if any), else None."""
    kinds = ["new", "new", "new", "copy", "copy", "none"] if earlier else ["new"] * 4 + ["none"]
    return st.sampled_from(kinds).flatmap(
        lambda kind: (
            new if kind == "new" else st.sampled_from(earlier) if kind == "copy" else st.none()
        )
    )


requests = st.builds(
    Request,
    st.integers(0, 3000),
    st.integers(0, 2000) | st.none(),
    st.just(frozenset()) | st.sets(st.sampled_from(CAPABILITIES), max_size=2).map(frozenset),
)
units = st.none() | st.sampled_from(UNITS)
bars = st.none() | st.sampled_from(BARS)
budgets = st.none() | st.integers(0, 10**6) | st.integers(0, 30)


def run(
    catalog: Catalog,
    request: Request,
    unit: str | None = None,
    bar: str | None = None,
    budget: int | None = None,
    *,
    route_bar: str | None = None,
    route_budget: int | None = None,
) -> Ranking:
    """The ranking, whether or not anything fits (then ``ranked`` is empty)."""
    config = catalog.config(unit, route_bar, route_budget)
    try:
        return rank(
            config,
            "r",
            request.payload(),
            prices=catalog.prices(),
            min_quality=None if bar is None else Decimal(bar),
            budget=budget,
            estimator=lambda payload: request.prompt,
        )
    except NoFittingDeployment as exc:
        nothing = exc.ranking
    assert nothing.ranked == ()
    return nothing


# -- the oracle --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Expected:
    estimate: Fraction | None  # None: no price, or no rate to the route's unit
    worst: Fraction | None  # None: unbounded (or not estimated)
    fits: bool


def oracle(
    catalog: Catalog, request: Request, unit: str | None, bar: str | None, budget: int | None
) -> tuple[str, dict[str, Expected]]:
    """The route's unit, and for every deployment its exact estimate and whether it fits."""
    if unit is None:
        unit = next((e.price["unit"] for e in catalog.entries if e.price is not None), "unit")
    quality_bar = Fraction(bar or "0")
    expected_reply = request.limit if request.limit is not None else catalog.default_completion
    out = {}
    for e in catalog.entries:
        info = e.info or {"quality": "0", "context_window": None, "capabilities": []}
        if e.price is None:
            out[e.key] = Expected(None, None, False)
            continue
        source = e.price["unit"]
        if source == unit:
            factor = Fraction(1)
        elif (source, unit) in catalog.rates:
            factor = Fraction(RATES[source, unit])
        else:
            out[e.key] = Expected(None, None, False)
            continue
        scale = Fraction(1, 1_000_000) if e.price["per"] == "million" else Fraction(1)

        price = {k: Fraction(e.price[k]) for k in ("prompt", "completion", "request")}

        def cost(
            completion: int,
            p: dict[str, Fraction] = price,
            f: Fraction = factor,
            s: Fraction = scale,
        ) -> Fraction:
            tokens = request.prompt * p["prompt"] + completion * p["completion"]
            return (tokens * s + p["request"]) * f

        window = info["context_window"]
        if request.limit is not None:
            worst: Fraction | None = cost(request.limit)
        elif window is not None:
            worst = cost(max(window - request.prompt, 0))
        else:
            worst = None
        fits = (
            Fraction(info["quality"]) >= quality_bar
            and request.needs <= set(info["capabilities"])
            and (window is None or request.prompt + expected_reply <= window)
            and (budget is None or (worst is not None and worst <= budget))
        )
        out[e.key] = Expected(cost(expected_reply), worst, fits)
    return unit, out


def keys(candidates: tuple[Candidate, ...]) -> list[str]:
    return [c.deployment.key for c in candidates]


def tied_groups(ranking: Ranking) -> list[set[str]]:
    """The ranked keys, grouped by exact ties (same estimate and quality), in order."""
    groups: list[tuple[tuple[Any, Decimal], set[str]]] = []
    for c in ranking.ranked:
        if groups and groups[-1][0] == (c.estimate, c.quality):
            groups[-1][1].add(c.deployment.key)
        else:
            groups.append(((c.estimate, c.quality), {c.deployment.key}))
    return [g for _, g in groups]


# -- properties --------------------------------------------------------------------------------
@given(catalogs(), requests, units, bars, budgets)
def test_the_ranking_is_the_oracles(
    catalog: Catalog, request: Request, unit: str | None, bar: str | None, budget: int | None
) -> None:
    ranking = run(catalog, request, unit, bar, budget)
    route_unit, expected = oracle(catalog, request, unit, bar, budget)
    assert ranking.unit == route_unit
    fitting = {k for k, x in expected.items() if x.fits}
    assert set(keys(ranking.ranked)) == fitting
    for c in ranking.ranked + ranking.excluded:
        x = expected[c.deployment.key]
        assert (c.estimate is None) == (x.estimate is None)
        if c.estimate is not None:
            assert Fraction(c.estimate) == x.estimate
            assert (c.worst_case is None) == (x.worst is None)
            assert c.worst_case is None or Fraction(c.worst_case) == x.worst
    if fitting:  # the first is the cheapest fitting deployment
        cheapest = min(x.estimate for x in expected.values() if x.fits and x.estimate is not None)
        assert Fraction(ranking.ranked[0].estimate or 0) == cheapest
        reference = ranking.reference
        assert reference is not None  # the dearest fitting one (no reference is configured)
        dearest = max(x.estimate for x in expected.values() if x.fits and x.estimate is not None)
        assert Fraction(reference.estimate or 0) == dearest
    else:
        assert ranking.reference is None


@given(catalogs(), requests, units, bars, budgets)
def test_the_order_is_total_cheapest_then_best_then_config_order(
    catalog: Catalog, request: Request, unit: str | None, bar: str | None, budget: int | None
) -> None:
    ranked = run(catalog, request, unit, bar, budget).ranked
    for before, after in itertools.pairwise(ranked):
        assert before.estimate is not None
        assert after.estimate is not None
        assert (before.estimate, -before.quality, before.order) < (
            after.estimate,
            -after.quality,
            after.order,
        )


@given(catalogs(), requests, st.sampled_from(UNITS), bars, budgets, st.data())
def test_config_order_only_decides_exact_ties(
    catalog: Catalog,
    request: Request,
    unit: str,
    bar: str | None,
    budget: int | None,
    data: st.DataObject,
) -> None:
    shuffled = Catalog(
        tuple(data.draw(st.permutations(catalog.entries))),
        catalog.rates,
        catalog.default_completion,
    )
    one = run(catalog, request, unit, bar, budget)
    other = run(shuffled, request, unit, bar, budget)
    assert tied_groups(one) == tied_groups(other)
    assert {c.deployment.key: c.excluded for c in one.excluded} == {
        c.deployment.key: c.excluded for c in other.excluded
    }
    for ranking in (one, other):  # inside a tie: each config's own order
        for group in tied_groups(ranking):
            order = [c.order for c in ranking.ranked if c.deployment.key in group]
            assert order == sorted(order)


@given(catalogs(), requests, units, st.sampled_from(BARS), st.sampled_from(BARS), budgets)
def test_raising_the_quality_bar_never_makes_the_choice_cheaper(
    catalog: Catalog,
    request: Request,
    unit: str | None,
    low: str,
    high: str,
    budget: int | None,
) -> None:
    low, high = sorted((low, high), key=Decimal)
    lower = run(catalog, request, unit, low, budget)
    higher = run(catalog, request, unit, high, budget)
    assert set(keys(higher.ranked)) <= set(keys(lower.ranked))
    if higher.ranked:
        assert lower.ranked
        assert lower.ranked[0].estimate is not None
        assert higher.ranked[0].estimate is not None
        assert lower.ranked[0].estimate <= higher.ranked[0].estimate
        assert all(c.quality >= Decimal(high) for c in higher.ranked)


@given(catalogs(), requests, units, bars, st.integers(0, 10**6) | st.integers(0, 30), st.booleans())
def test_a_budget_never_lets_a_worse_worst_case_through(
    catalog: Catalog,
    request: Request,
    unit: str | None,
    bar: str | None,
    budget: int,
    on_route: bool,
) -> None:
    ranking = (
        run(catalog, request, unit, bar, route_budget=budget)
        if on_route
        else run(catalog, request, unit, bar, budget)
    )
    assert ranking.budget == budget
    _, expected = oracle(catalog, request, unit, bar, budget)
    for c in ranking.ranked:
        worst = expected[c.deployment.key].worst
        assert worst is not None
        assert worst <= budget
        assert c.worst_case is not None
        assert c.worst_case <= budget
    unbounded = run(catalog, request, unit, bar, None)
    assert set(keys(ranking.ranked)) <= set(keys(unbounded.ranked))


@given(catalogs(), requests, units, bars, budgets, bars)
def test_every_deployment_is_ranked_or_excluded_never_both(
    catalog: Catalog,
    request: Request,
    unit: str | None,
    bar: str | None,
    budget: int | None,
    route_bar: str | None,
) -> None:
    ranking = run(catalog, request, unit, bar, budget, route_bar=route_bar)
    ranked, excluded = keys(ranking.ranked), keys(ranking.excluded)
    assert sorted(ranked + excluded) == sorted(e.key for e in catalog.entries)
    assert not set(ranked) & set(excluded)
    assert all(c.excluded is None for c in ranking.ranked)
    assert all(c.excluded for c in ranking.excluded)
    assert ranking.min_quality == Decimal(bar if bar is not None else route_bar or "0")
    text = ranking.explain()
    assert all(f"  -  {k}  excluded: " in text for k in excluded)
