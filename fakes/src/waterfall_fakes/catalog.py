"""The models a fake serves, their published prices, and how replies and tokens are made.

Everything here is deterministic: the same seed, request number and request give the same reply,
and the token counts are exact by construction (one word of the reply is one completion token),
so a test can predict every ``usage`` number with :func:`count_prompt_tokens`.
"""

from __future__ import annotations

import hashlib
import json
import random
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DEFAULT_MODELS",
    "WORDS",
    "FakeModel",
    "count_prompt_tokens",
    "dumps",
    "message_text",
    "reply_words",
]

WORDS: tuple[str, ...] = (
    "the", "router", "café", "naïve", "straße", "日本語", "数据", "流式", "🚀", "👩‍💻", "λ",
    "Ωmega", "façade", "résumé", "tokens", "stream", "waterfall", "ünïcødé", "😀", "ок",
)  # fmt: skip
"""The vocabulary replies are drawn from: ASCII, accents, CJK, emoji (including a ZWJ sequence)."""


class FakeModel(BaseModel):
    """A model a fake serves, with the prices it publishes on ``GET /v1/models``.

    Prices are exact decimals: ``usd_*`` in US dollars per token (published as strings, the
    OpenRouter style) and ``sats_*`` in sats per token (published as numbers in ``sats_pricing``,
    the Routstr style); ``*_request`` is a fee per request.

    With ``enforce_context``, a chat request whose prompt tokens plus ``max_tokens`` (or
    ``max_completion_tokens``) exceed ``context_length`` is answered as OpenAI answers it: 400,
    code ``context_length_exceeded``. ``prefill`` says what the model does with a chat request
    whose last message has role ``assistant``: ``ignore`` it (a new answer, as OpenAI does),
    ``honour`` it (continue the prefilled text) or ``reject`` it (400).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    context_length: int = Field(default=16_384, ge=1)
    enforce_context: bool = False
    prefill: Literal["ignore", "honour", "reject"] = "ignore"
    usd_prompt: Decimal = Decimal("0.000001")
    usd_completion: Decimal = Decimal("0.000002")
    usd_request: Decimal = Decimal("0")
    sats_prompt: Decimal = Decimal("0.001")
    sats_completion: Decimal = Decimal("0.002")
    sats_request: Decimal = Decimal("0")

    def listing(self, created: int) -> dict[str, Any]:
        """This model's entry in a ``GET /v1/models`` answer."""
        return {
            "id": self.id,
            "object": "model",
            "created": created,
            "owned_by": "waterfall-fakes",
            "context_length": self.context_length,
            "pricing": {
                "prompt": _plain(self.usd_prompt),
                "completion": _plain(self.usd_completion),
                "request": _plain(self.usd_request),
            },
            "sats_pricing": {
                "prompt": self.sats_prompt,
                "completion": self.sats_completion,
                "request": self.sats_request,
            },
        }


def _plain(d: Decimal) -> str:
    return format(d, "f")


def dumps(obj: Any) -> bytes:
    """Compact JSON (UTF-8, not ASCII-escaped); a Decimal becomes a bare number with its digits."""
    marks: dict[str, str] = {}

    def walk(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        if isinstance(o, Decimal):
            key = f"\x00{len(marks)}\x00"
            marks[key] = _plain(o)
            return key
        return o

    text = json.dumps(walk(obj), ensure_ascii=False, separators=(",", ":"))
    for key, digits in marks.items():
        text = text.replace(json.dumps(key), digits)
    return text.encode()


DEFAULT_MODELS: tuple[FakeModel, ...] = (
    FakeModel(
        id="fake-small",
        context_length=8_192,
        usd_prompt=Decimal("0.00000015"),
        usd_completion=Decimal("0.0000006"),
        sats_prompt=Decimal("0.00015"),
        sats_completion=Decimal("0.0006"),
    ),
    FakeModel(
        id="fake-medium",
        context_length=32_768,
        usd_prompt=Decimal("0.000001"),
        usd_completion=Decimal("0.000004"),
        sats_prompt=Decimal("0.001"),
        sats_completion=Decimal("0.004"),
        sats_request=Decimal("1"),
    ),
    FakeModel(
        id="fake-large",
        context_length=128_000,
        usd_prompt=Decimal("0.000005"),
        usd_completion=Decimal("0.000015"),
        usd_request=Decimal("0.0001"),
        sats_prompt=Decimal("0.005"),
        sats_completion=Decimal("0.015"),
        sats_request=Decimal("2"),
    ),
)
"""Three models, cheap to dear, used when a fake is given none."""


def message_text(content: Any) -> str:
    """The text of a message's ``content``: the string, or its text parts joined by spaces."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def count_prompt_tokens(messages: list[Any]) -> int:
    """The fakes' exact prompt token count: 3 per message plus one per whitespace-separated word."""
    total = 0
    for m in messages:
        total += 3
        if isinstance(m, dict):
            total += len(message_text(m.get("content")).split())
    return total


def reply_words(seed: int, request_number: int, choice: int, body: bytes, count: int) -> list[str]:
    """The words of one reply: a function of the seed, the request and nothing else."""
    digest = hashlib.sha256(b"%d:%d:%d:" % (seed, request_number, choice) + body).digest()
    rng = random.Random(digest)
    return [rng.choice(WORDS) for _ in range(count)]
