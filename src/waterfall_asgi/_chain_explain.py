"""``waterfall-asgi explain`` for a chain (or a model, or one entry): the entries a request
naming it would try, in order, and which of them are cooling down and until when.

Cooldowns live where the router keeps them. With the default in-memory store each router process
has its own, and no other process can see them: the explanation says so rather than guess. With a
shared store configured (``[cooldowns]`` with a Redis URL) the deadlines are read from it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .config import Deployment, RouterConfig

__all__ = ["ChainPlan", "chain_plan", "read_cooldowns"]

NO_LIVE_STATE = (
    "cooldowns: this config keeps them in each router process's memory, where no other process "
    "can see them, so every entry is shown as it would be on a router with none cooling (a "
    "[cooldowns] table with a Redis URL shares them, and then this command reads them)."
)


@dataclass
class ChainPlan:
    """What a request naming ``name`` would try, and what is cooling now (``cooling``: entry
    key -> deadline, epoch seconds; ``None``: not known to this process)."""

    kind: str  # "chain", "model" or "entry"
    name: str
    entries: list[Deployment]
    apis: dict[str, tuple[str, ...]]  # each entry's provider: the APIs it speaks
    cooling: dict[str, float] | None
    source: str  # where the cooldowns were read, or why they were not
    now: float

    def _until(self, key: str) -> float | None:
        if self.cooling is None:
            return None
        until = self.cooling.get(key)
        return until if until is not None and until > self.now else None

    def explain(self) -> str:
        """The plan as text."""
        count = len(self.entries)
        what = {"chain": "chain", "model": "model", "entry": "entry"}[self.kind]
        lines = [
            f"{what} {self.name!r}: {count} {'entry' if count == 1 else 'entries'}, tried in this "
            "order until one answers"
        ]
        width = max(len(d.key) for d in self.entries)
        ready = 0
        for i, d in enumerate(self.entries, 1):
            until = self._until(d.key)
            if until is None:
                state = "would be tried" if self.cooling is not None else "tried unless cooling"
                ready += 1
            else:
                stamp = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
                state = f"cooling until {stamp} ({until - self.now:.0f}s from now): skipped"
            spoken = self.apis.get(d.provider, ("chat",))
            if spoken != ("chat",):  # (the default says nothing new)
                state += f" (speaks {', '.join(spoken)})"
            lines.append(f"  {i}. {d.key.ljust(width)}  {state}")
        if self.cooling is None:
            lines.append(self.source)
        else:
            lines.append(f"cooldowns: read from {self.source}")
            if ready == 0:
                lines.append(
                    "every entry is cooling: a request now gets 503 all_providers_exhausted"
                )
        return "\n".join(lines)

    def to_json(self) -> str:
        """The plan as JSON."""
        data: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "cooldowns": self.source if self.cooling is not None else None,
            "entries": [
                {
                    "entry": d.key,
                    "provider": d.provider,
                    "model": d.model,
                    "cooling_until": self._until(d.key),
                    "apis": list(self.apis.get(d.provider, ("chat",))),
                }
                for d in self.entries
            ],
        }
        if self.cooling is None:
            data["note"] = self.source
        return json.dumps(data, ensure_ascii=False, indent=2)


async def read_cooldowns(store: Any) -> tuple[dict[str, float] | None, str]:
    """The deadlines in the cooldown ``store`` a router with this config would use, and where
    they were read (``None``: not visible from this process, and why). An in-memory store is
    this process's own, and empty: the routers' stores cannot be seen. A shared store is opened,
    read and closed (its ``url`` is shown, its password redacted by the store)."""
    from .cooldown import InMemoryCooldownStore

    if isinstance(store, InMemoryCooldownStore):
        return None, NO_LIVE_STATE
    where = str(getattr(store, "url", type(store).__name__))
    opening = getattr(store, "open", None)
    if opening is not None:
        await opening()
    try:
        if not getattr(store, "connected", True):
            return None, (
                f"cooldowns: the shared store at {where} did not answer, so which entries are "
                "cooling is not known: every entry is shown as it would be with none cooling."
            )
        return dict(await store.snapshot()), f"the shared store at {where}"
    finally:
        closing = getattr(store, "close", None)
        if closing is not None:
            await closing()


def entries_for(config: RouterConfig, name: str) -> tuple[str, list[Deployment]] | None:
    """What a request's ``model`` = ``name`` tries, as the router plans it: a chain, else every
    entry of that model, else the one ``provider/model`` entry (``None``: nothing)."""
    if name in config.chains:
        return "chain", list(config.chains[name])
    every = config.all_deployments()
    by_model = [d for d in every if d.model == name]
    if by_model:
        return "model", by_model
    by_key = [d for d in every if d.key == name]
    return ("entry", by_key) if by_key else None


def chain_plan(
    config: RouterConfig,
    name: str,
    cooling: Mapping[str, float] | None = None,
    source: str = NO_LIVE_STATE,
    now: float | None = None,
) -> ChainPlan | None:
    """The plan for ``name`` (``None``: it names nothing), with the deadlines in ``cooling``
    (``None``: unknown, and ``source`` says why)."""
    found = entries_for(config, name)
    if found is None:
        return None
    kind, entries = found
    return ChainPlan(
        kind,
        name,
        entries,
        {d.provider: config.providers[d.provider].apis for d in entries},
        None if cooling is None else dict(cooling),
        source,
        time.time() if now is None else now,
    )
