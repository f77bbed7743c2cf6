"""A day of made-up usage records, seeded: three providers, a rate-limit storm in the
afternoon that sends traffic down the chain, some timeouts, disconnects and exhaustions."""

from __future__ import annotations

import random

from waterfall_asgi import UsageRecord

ENTRIES = (
    ("openai", "gpt-4o-mini", 0.15, 0.6),
    ("groq", "llama-3.1-8b", 0.05, 0.08),
    ("openrouter", "claude-3.5-sonnet", 3.0, 15.0),
)


def sample_records(
    n: int = 600, *, seed: int = 7, start: float = 1_800_000_000.0
) -> list[UsageRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        moment = start + i * 86400 / n + rng.random() * 60
        storm = 0.3 < i / n < 0.45
        attempts: list[dict[str, object]] = []
        served = None
        for number, (provider, model, prompt_price, completion_price) in enumerate(ENTRIES):
            entry = f"{provider}/{model}"
            if number == 0 and storm and rng.random() < 0.7:
                attempts.append(
                    {
                        "entry": entry,
                        "outcome": "status",
                        "status": 429,
                        "elapsed_ms": 20.0,
                        "cooldown_s": 20.0,
                    }
                )
                continue
            if number == 1 and rng.random() < 0.1:
                attempts.append(
                    {
                        "entry": entry,
                        "outcome": "timeout",
                        "status": None,
                        "elapsed_ms": 900.0,
                        "cooldown_s": None,
                    }
                )
                continue
            attempts.append(
                {
                    "entry": entry,
                    "outcome": "served",
                    "status": 200,
                    "elapsed_ms": 80.0,
                    "cooldown_s": None,
                }
            )
            served = (provider, model, prompt_price, completion_price)
            break
        record = UsageRecord(
            id=f"{i:032x}",
            started_at=moment,
            route="/v1/chat/completions",
            model="fast",
            attempts=attempts,
        )
        if served is not None:
            provider, model, prompt_price, completion_price = served
            record.provider, record.upstream_model = provider, model
            record.prompt_tokens = rng.randint(50, 2000)
            record.completion_tokens = rng.randint(20, 800)
            record.total_tokens = record.prompt_tokens + record.completion_tokens
            cost = record.prompt_tokens * prompt_price + record.completion_tokens * completion_price
            record.cost, record.cost_unit = int(cost) + 1, "usd_micro"
            record.ttfb_ms = round(rng.lognormvariate(5, 0.5) + 400 * (provider == "openrouter"), 3)
            gone = rng.random() < 0.03
            record.status = "client_disconnected" if gone else "success"
            record.http_status = 200
        else:
            record.status, record.http_status = "exhausted", 503
            record.error = "all_providers_exhausted"
        record.duration_ms = round((record.ttfb_ms or 0.0) + 500, 3)
        out.append(record)
    return out
