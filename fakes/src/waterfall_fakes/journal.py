"""The journal: what a fake received and how it answered, as stable JSON.

Every request a fake answers (other than the control plane's own) is kept as a
:class:`~waterfall_fakes.RecordedRequest`; :func:`entry_json` turns one into the JSON object the
control plane serves at ``GET /_fake/journal``, and :func:`journal_json` the whole journal. The
shapes are versioned (:data:`JOURNAL_VERSION`): a field may be added within a version, never
renamed, removed or given another meaning.

How a reply went out (when its headers and its last byte were sent, how many bytes, whether it
ended cleanly) is known only to whatever plays the reply back, after the request was recorded;
it fills in the record's :class:`Delivery` as it goes.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .provider import FakeProvider, RecordedRequest, Reply

__all__ = ["JOURNAL_VERSION", "Delivery", "DeliveryEnd", "entry_json", "journal_json", "usage_sent"]

JOURNAL_VERSION = 1
"""The version of the journal's JSON shape (``"version"`` in every control plane answer)."""

DeliveryEnd = Literal["pending", "complete", "cut", "client_gone"]
"""How a reply ended: still being sent (or hanging), sent whole, cut by the script, or abandoned
because the client went away first."""


@dataclass
class Delivery:
    """How one reply went out, filled in while it is sent (times on the fake's clock).

    ``headers_at`` is when the response headers went out (``None``: not yet, or never),
    ``ended_at`` when the reply ended, however it ended (``end``), and ``bytes_sent`` counts the
    body bytes handed to the server. The in-process transport, which has no wire, fills in
    ``headers_at`` only.
    """

    headers_at: float | None = None
    ended_at: float | None = None
    end: DeliveryEnd = "pending"
    bytes_sent: int = 0

    def finish(self, end: DeliveryEnd, at: float) -> None:
        """Record the end of the reply (the first call wins)."""
        if self.end == "pending":
            self.end, self.ended_at = end, at


def usage_sent(reply: Reply) -> dict[str, Any] | None:
    """The ``usage`` object the reply's body carries (the last one of a stream), if any.

    Read from the bytes the reply sends, so a usage chunk removed by a fault (``truncate``,
    ``cut``, ``no_usage``) is not counted. In a Responses API stream it is the usage of the
    response that ends it (``response.completed``, ``response.incomplete``); in an Anthropic
    Messages stream, ``message_start``'s usage updated by every ``message_delta``'s (whose
    ``output_tokens`` are the total so far).
    """
    body = reply.body
    content_type = dict(reply.headers).get("content-type", "")
    if content_type.startswith("application/json"):
        try:
            obj = json.loads(body)
        except ValueError:
            return None
        usage = obj.get("usage") if isinstance(obj, dict) else None
        return usage if isinstance(usage, dict) else None
    if not content_type.startswith("text/event-stream"):
        return None
    found: dict[str, Any] | None = None
    text = body.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    for line in text.split("\n"):
        if not line.startswith("data:"):
            continue
        try:
            obj = json.loads(line[5:])
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        kind = obj.get("type")
        if kind == "message_start" and isinstance(obj.get("message"), dict):
            usage = obj["message"].get("usage")
            found = dict(usage) if isinstance(usage, dict) else found
        elif kind == "message_delta" and isinstance(obj.get("usage"), dict):
            found = {**(found or {}), **obj["usage"]}
        elif isinstance(kind, str) and kind.startswith("response."):
            response = obj.get("response")
            usage = response.get("usage") if isinstance(response, dict) else None
            found = usage if isinstance(usage, dict) else found
        elif isinstance(obj.get("usage"), dict):
            found = obj["usage"]
    return found


def _ms(start: float, end: float | None) -> float | None:
    return None if end is None else round((end - start) * 1000, 3)


def entry_json(record: RecordedRequest) -> dict[str, Any]:
    """One journal entry: a recorded request as the control plane serves it (version 1)."""
    from .behaviours import format_behaviours

    try:
        body, encoding = record.body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(record.body).decode("ascii"), "base64"
    delivery = record.delivery
    return {
        "index": record.index,
        "number": record.number,
        "method": record.method,
        "path": record.path,
        "headers": dict(record.headers),
        "body": body,
        "body_encoding": encoding,
        "json": record.json,
        "client": record.client,
        "answered_by": list(record.answered_by),
        "draws": [d.to_json() for d in record.draws],
        "behaviours": [b.model_dump(mode="json") for b in record.behaviours],
        "behaviours_text": format_behaviours(list(record.behaviours)),
        "status": record.status,
        "response_headers": dict(record.response_headers),
        "usage": record.usage,
        "received_at": record.received_at,
        "timings": {
            "headers_ms": _ms(record.received_at, delivery.headers_at),
            "end_ms": _ms(record.received_at, delivery.ended_at),
        },
        "end": delivery.end,
        "bytes_sent": delivery.bytes_sent,
    }


def journal_json(provider: FakeProvider, since: int = 0) -> dict[str, Any]:
    """The whole journal of ``provider`` from entry ``since`` on (version 1)."""
    records = list(provider.requests)
    return {
        "version": JOURNAL_VERSION,
        "name": provider.config.name,
        "seed": provider.config.seed,
        "count": len(records),
        "entries": [entry_json(r) for r in records[since:]],
    }
