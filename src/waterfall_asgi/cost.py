"""Cost routing: rank the deployments that fit a request by what it will cost them, exactly.

For a request naming a :class:`~waterfall_asgi.config.Route`, every candidate deployment is
checked against the request (quality bar, capabilities the request uses, context window, budget)
and those that fit are ranked by their estimated cost, computed with :class:`~decimal.Decimal`
and converted between units only through configured :class:`~waterfall_asgi.config.Rate` s::

    estimate   = prompt tokens x prompt price + expected completion x completion price + fee
    worst case = prompt tokens x prompt price + at most the reply's limit x completion price + fee

where the expected completion is ``max_tokens`` (or ``max_completion_tokens``), else the route's
``default_completion_tokens``, and the limit is ``max_tokens``, else what the context window
leaves. Ties go to the higher quality, then to config order, so the order is total. The ranked
list is what the waterfall walks, so a 429 falls to the next-cheapest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .config import Deployment, Price, RouterConfig
from .errors import RouterError

__all__ = [
    "Candidate",
    "NoFittingDeployment",
    "PromptEstimator",
    "Ranking",
    "completion_limit",
    "convert",
    "estimate_prompt_tokens",
    "rank",
    "request_limits",
    "required_capabilities",
]

PromptEstimator = Callable[[Mapping[str, Any]], int]
"""Estimates a request's prompt tokens from its JSON body."""


def _texts(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, dict):
        for key in _TEXT_KEYS:
            if key in value:
                yield from _texts(value[key])


# Where a message keeps text a model reads: its content (and the parts' text), its name, and the
# calls an assistant made (``tool_calls[].function`` and the legacy ``function_call``).
_TEXT_KEYS = (
    "content",
    "text",
    "input",
    "prompt",
    "arguments",
    "name",
    "tool_calls",
    "function",
    "function_call",
    "output",
)


def estimate_prompt_tokens(payload: Mapping[str, Any]) -> int:
    """A fast estimate needing no download: one token per 4 bytes of UTF-8 text (rounded up),
    plus 4 per message, plus the tool (or legacy function) definitions' JSON at the same rate.
    The text is the messages' content, names and tool calls, a ``prompt`` or ``input`` (the
    Responses API's items included), and a ``system`` prompt or ``instructions`` (Anthropic
    Messages, the Responses API).

    >>> estimate_prompt_tokens({"messages": [{"role": "user", "content": "Hello there!"}]})
    7
    """
    messages = payload.get("messages")
    count = 4 * len(messages) if isinstance(messages, list) else 0
    size = sum(len(t.encode()) for t in _texts(messages if messages is not None else []))
    size += sum(len(t.encode()) for t in _texts(payload.get("prompt")))
    size += sum(len(t.encode()) for t in _texts(payload.get("input")))
    size += sum(len(t.encode()) for t in _texts(payload.get("system")))
    size += sum(len(t.encode()) for t in _texts(payload.get("instructions")))
    for definitions in (payload.get("tools"), payload.get("functions")):
        if definitions:
            size += len(json.dumps(definitions, ensure_ascii=False, default=str).encode())
    return count + math.ceil(size / 4)


def required_capabilities(payload: Mapping[str, Any]) -> frozenset[str]:
    """What a request needs of a model: ``tools``, ``vision`` (image parts, in any of the three
    APIs' shapes), ``json_schema`` (``response_format``, or the Responses API's
    ``text.format``)."""
    needs: set[str] = set()
    if payload.get("tools") or payload.get("functions"):
        needs.add("tools")
    for items in (payload.get("messages"), payload.get("input")):
        if isinstance(items, list) and any(_has_image(item) for item in items):
            needs.add("vision")
    text = payload.get("text")
    for response_format in (
        payload.get("response_format"),
        text.get("format") if isinstance(text, dict) else None,
    ):
        if isinstance(response_format, dict) and response_format.get("type") in (
            "json_schema",
            "json_object",
        ):
            needs.add("json_schema")
    return frozenset(needs)


_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
"""Image parts: Chat Completions', the Responses API's and Anthropic's."""


def _has_image(message: Any) -> bool:
    content = message.get("content") if isinstance(message, dict) else None
    return isinstance(content, list) and any(
        isinstance(p, dict) and p.get("type") in _IMAGE_PARTS for p in content
    )


def completion_limit(payload: Mapping[str, Any]) -> int | None:
    """The most tokens a request lets its answer have: ``max_completion_tokens``, else
    ``max_tokens`` (Chat Completions' older name, and Anthropic's), else ``max_output_tokens``
    (the Responses API); ``None`` when it sets none (or sets something that is not a whole
    number of tokens).

    >>> completion_limit({"max_output_tokens": 50}), completion_limit({"max_tokens": True})
    (50, None)
    """
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        limit = payload.get(name)
        if limit is not None:  # absent or null: the next name
            break
    return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0 else None


def request_limits(
    config: RouterConfig,
    route: str,
    min_quality: str | None,
    budget: str | None,
    *,
    names: tuple[str, str] = ("x-waterfall-min-quality", "x-waterfall-budget"),
) -> tuple[Decimal | None, int | None]:
    """The quality bar and budget a request asks for (header text, ``None`` if absent), by the
    rules: a bar only within the route's ``quality_bounds``; a budget that can only lower the
    route's own. Raises :class:`ValueError` naming the offending header (``names``)."""
    settings = config.routes[route]
    bar = None
    if min_quality is not None:
        bounds = settings.quality_bounds
        try:
            bar = Decimal(min_quality.strip())
        except ArithmeticError:
            bar = None
        if (
            bar is None
            or not bar.is_finite()
            or bounds is None
            or not bounds[0] <= bar <= bounds[1]
        ):
            allowed = f"accepts from {bounds[0]} to {bounds[1]}" if bounds else "allows no override"
            raise ValueError(f"{names[0]} {min_quality!r}: route {route!r} {allowed}.")
    limit = settings.budget
    if budget is not None:
        digits = budget.strip()
        if not (digits.isascii() and digits.isdecimal()):
            raise ValueError(f"{names[1]} {budget!r}: a whole number of {route!r}'s unit.")
        limit = int(digits) if limit is None else min(limit, int(digits))
    return bar, limit


def convert(amount: Decimal, source: str, target: str, config: RouterConfig) -> Decimal:
    """``amount`` of ``source`` in ``target`` units, through a configured rate only."""
    if source == target:
        return amount
    for rate in config.rates:
        if rate.source == source and rate.target == target:
            return amount * rate.rate
    raise LookupError(f"no rate from {source!r} to {target!r} in the config's rates")


@dataclass(frozen=True)
class Candidate:
    """One deployment, as a route saw it for one request."""

    deployment: Deployment
    order: int
    quality: Decimal
    price: Price | None
    estimate: Decimal | None = None
    """Estimated cost, exact, in the route's unit."""
    worst_case: Decimal | None = None
    excluded: str | None = None
    """Why it cannot serve this request (``None``: it can)."""


@dataclass(frozen=True)
class Ranking:
    """The candidates of one request, cheapest first, and those excluded, with why."""

    route: str
    unit: str
    prompt_tokens: int
    completion_tokens: int
    min_quality: Decimal
    budget: int | None
    ranked: tuple[Candidate, ...]
    excluded: tuple[Candidate, ...]
    reference: Candidate | None = None
    needs: frozenset[str] = field(default_factory=frozenset)

    @property
    def plan(self) -> list[Deployment]:
        """The deployments for the waterfall, in order."""
        return [c.deployment for c in self.ranked]

    def explain(self) -> str:
        """A readable account: the estimate's inputs, the ranking and every exclusion."""
        lines = [
            f"route {self.route!r}: {self.prompt_tokens} prompt tokens (estimated), "
            f"{self.completion_tokens} completion tokens expected, costs in {self.unit}",
            f"minimum quality {self.min_quality}"
            + (f", budget {self.budget} {self.unit}" if self.budget is not None else "")
            + (f", needs {', '.join(sorted(self.needs))}" if self.needs else ""),
        ]
        for i, c in enumerate(self.ranked, 1):
            mark = (
                "  (reference)"
                if self.reference and c.deployment == self.reference.deployment
                else ""
            )
            lines.append(
                f"{i:>3}. {c.deployment.key}  ~{_fmt(c.estimate)} {self.unit}"
                f"  (worst {_fmt(c.worst_case)})  quality {c.quality}{mark}"
            )
        for c in self.excluded:
            lines.append(f"  -  {c.deployment.key}  excluded: {c.excluded}")
        if self.reference is not None and self.reference not in self.ranked:
            lines.append(
                f"reference: {self.reference.deployment.key}"
                f"  ~{_fmt(self.reference.estimate)} {self.unit}"
            )
        return "\n".join(lines)


def _fmt(value: Decimal | None) -> str:
    return "-" if value is None else format(value.normalize(), "f")


class NoFittingDeployment(RouterError):
    """No candidate of a route fits the request: 400 with every exclusion and its reason."""

    def __init__(self, ranking: Ranking) -> None:
        reasons = "; ".join(f"{c.deployment.key}: {c.excluded}" for c in ranking.excluded)
        super().__init__(
            400,
            f"No deployment of route {ranking.route!r} fits this request: {reasons or 'none'}.",
            "invalid_request_error",
            "no_fitting_deployment",
        )
        self.ranking = ranking


def rank(
    config: RouterConfig,
    route_name: str,
    payload: Mapping[str, Any],
    *,
    prices: Mapping[str, Price] | None = None,
    min_quality: Decimal | None = None,
    budget: int | None = None,
    estimator: PromptEstimator = estimate_prompt_tokens,
) -> Ranking:
    """Rank ``route_name``'s candidates for ``payload``. ``prices`` (by ``provider/model``)
    overrides nothing the config sets; it fills in prices imported from providers."""
    route = config.routes[route_name]
    candidates = list(route.deployments) or [
        d for d in config.all_deployments() if _price(config, d, prices) is not None
    ]
    quality_bar = route.min_quality if min_quality is None else min_quality
    budget = route.budget if budget is None else budget
    prompt = estimator(payload)
    limit = completion_limit(payload)
    expected = limit if limit is not None else route.default_completion_tokens
    needs = required_capabilities(payload)
    first = next((p for d in candidates if (p := _price(config, d, prices)) is not None), None)
    unit = route.unit or (first.unit if first else "unit")

    def evaluate(d: Deployment, order: int) -> Candidate:
        info = config.models.get(d.model)
        quality = info.quality if info else Decimal(0)
        price = _price(config, d, prices)
        if price is None:
            return Candidate(d, order, quality, None, excluded="no price")
        window = info.context_window if info else None
        most = limit if limit is not None else (window - prompt if window is not None else None)
        try:
            estimate = convert(price.exact(prompt, expected), price.unit, unit, config)
            worst = (
                convert(price.exact(prompt, max(most, 0)), price.unit, unit, config)
                if most is not None
                else None
            )
        except LookupError as exc:
            return Candidate(d, order, quality, price, excluded=str(exc))
        reason = None
        missing = needs - (info.capabilities if info else frozenset())
        if quality < quality_bar:
            reason = f"quality {quality} is below {quality_bar}"
        elif missing:
            reason = f"cannot do {', '.join(sorted(missing))}"
        elif window is not None and prompt + expected > window:
            reason = f"context window {window} < {prompt} prompt + {expected} completion tokens"
        elif budget is not None and (worst is None or worst > budget):
            reason = (
                f"worst case {_fmt(worst)} {unit} exceeds the budget of {budget} {unit}"
                if worst is not None
                else "no bound on its cost (no max_tokens, no context window) for the budget"
            )
        return Candidate(d, order, quality, price, estimate, worst, reason)

    seen = [evaluate(d, order) for order, d in enumerate(candidates)]
    fitting = sorted(
        (c for c in seen if c.excluded is None),
        key=lambda c: (c.estimate, -c.quality, c.order),
    )
    excluded = tuple(c for c in seen if c.excluded is not None)
    reference = None
    if route.reference is not None:
        key = route.reference.key
        reference = next((c for c in seen if c.deployment.key == key), None)
        if reference is None:  # not a candidate: still what savings are measured against
            reference = evaluate(route.reference, len(candidates))
    elif fitting:
        reference = max(fitting, key=lambda c: (c.estimate, c.quality, -c.order))
    ranking = Ranking(
        route_name, unit, prompt, expected, quality_bar, budget, tuple(fitting), excluded,
        reference, needs,
    )  # fmt: skip
    if not fitting:
        raise NoFittingDeployment(ranking)
    return ranking


def _price(config: RouterConfig, d: Deployment, prices: Mapping[str, Price] | None) -> Price | None:
    own = config.price_of(d)
    if own is not None:
        return own
    return prices.get(d.key) if prices else None
