"""What a served request costs: :class:`Charge` prices its tokens exactly, in one unit.

A request is priced at the price of the entry that served it, in the unit of its cost route (or
the price's own), with what the route's reference entry would have cost beside it. A stream
continued on later entries is priced part by part, each at its own entry's price, and summed
(:func:`price_parts`). Every cost is rounded up once, to whole units, at the end.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from decimal import Decimal

from ._fastjson import encoder
from ._records import attempt_log
from .config import Deployment, Price, RouterConfig, ceil_units
from .cost import Ranking, convert
from .ledger import UsageRecord
from .relay import RelayOutcome
from .usage import UsageResult

__all__ = ["Charge", "continued", "cost_event", "estimated_cost"]

_ENCODE = encoder()  # as json.dumps


class Charge:
    """How a request's tokens are priced: the deployment that served, the unit to record the
    cost in (a route's, or the price's own), and what the route's reference would have cost."""

    __slots__ = ("config", "price", "reference", "unit")

    def __init__(
        self,
        config: RouterConfig,
        price: Price | None,
        unit: str | None = None,
        reference: Price | None = None,
    ) -> None:
        self.config, self.price, self.unit, self.reference = config, price, unit, reference

    def apply(self, record: UsageRecord, usage: UsageResult) -> None:
        """Copy the tokens a response reported into ``record``, and price them exactly."""
        record.prompt_tokens = usage.prompt_tokens
        record.completion_tokens = usage.completion_tokens
        record.total_tokens = usage.total_tokens
        costs = self.costs(usage)
        if costs is not None:
            record.cost, record.cost_unit, record.reference_cost = costs

    def costs(self, usage: UsageResult) -> tuple[int, str, int | None] | None:
        """``(cost, unit, reference cost)`` of the reported tokens (``None``: no price or no
        usage). A reference that cannot be converted into the unit has no cost (``None``)."""
        if self.price is None or not usage.has_usage:
            return None
        tokens = (usage.prompt_tokens or 0, usage.completion_tokens or 0)
        unit = self.unit or self.price.unit
        cost = self._in(unit, self.price, *tokens)
        if cost is None:  # pragma: no cover - a ranked candidate always converts
            return None
        reference = self._in(unit, self.reference, *tokens) if self.reference else None
        return cost, unit, reference

    def _in(self, unit: str, price: Price, prompt: int, completion: int) -> int | None:
        try:
            exact = convert(price.exact(prompt, completion), price.unit, unit, self.config)
        except LookupError:
            return None
        return ceil_units(exact)


def estimated_cost(ranking: Ranking, deployment: Deployment) -> bytes:
    """The ``x-waterfall-estimated-cost`` of the ranked candidate that served."""
    key = deployment.key
    chosen = next(c for c in ranking.ranked if c.deployment.key == key)
    return f"{ceil_units(chosen.estimate or Decimal(0))} {ranking.unit}".encode(
        "latin-1", "replace"
    )


def cost_event(charge: Charge, request_id: str) -> Callable[[UsageResult], bytes | None]:
    """The ``waterfall.cost`` event a clean stream ends with (see ``ledger.cost_event``)."""

    def cost_event(usage: UsageResult) -> bytes | None:
        costs = charge.costs(usage)
        if costs is None:
            return None
        data = {"id": request_id, "cost": costs[0], "unit": costs[1]}  # as in the ledger
        return b"event: waterfall.cost\ndata: " + _ENCODE(data).encode() + b"\n\n"

    return cost_event


def continued(
    record: UsageRecord,
    outcome: RelayOutcome,
    charge: Charge,
    price_of: Callable[[Deployment], Price | None],
) -> None:
    """Record a stream the router tried to continue: the continuation's attempts, and, when
    it was continued, the tokens and cost of every part (each priced at its own entry's
    price, by ``price_of``, in one unit), summed, and each on its served attempt."""
    served = [a for a in record.attempts if a["outcome"] == "served"][-1:]
    for attempt in outcome.attempts:
        log = attempt_log(attempt)
        log["continuation"] = True
        record.attempts.append(log)
        if attempt.outcome == "served":
            served.append(log)
    if not outcome.parts or outcome.deployment is None:
        return
    usages = [(p.deployment, p.usage) for p in outcome.parts]
    usages.append((outcome.deployment, outcome.usage))
    unit = charge.unit or (charge.price.unit if charge.price is not None else None)
    tokens = [0, 0, 0]
    counted = False
    total: int | None = 0
    for (deployment, usage), log, part in itertools.zip_longest(usages, served, outcome.parts):
        price = price_of(deployment)
        own = Charge(charge.config, price, unit or (price.unit if price else None))
        costs = own.costs(usage)
        if log is not None:
            log["prompt_tokens"] = usage.prompt_tokens
            log["completion_tokens"] = usage.completion_tokens
            log["cost"] = costs[0] if costs is not None else None
            if part is not None:
                log["ended"] = part.ended
        if usage.has_usage:
            counted = True
            tokens[0] += usage.prompt_tokens or 0
            tokens[1] += usage.completion_tokens or 0
            tokens[2] += usage.total_tokens or 0
            total = None if costs is None or total is None else total + costs[0]
    if counted:
        record.prompt_tokens, record.completion_tokens, record.total_tokens = tokens
    record.cost = total if counted and total is not None else None
    record.cost_unit = unit if record.cost is not None else None
    record.reference_cost = None
