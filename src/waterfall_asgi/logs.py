"""Log lines as JSON objects (``waterfall-asgi serve --log-format json``).

The router logs to the ``waterfall_asgi`` logger and configures no handler itself: a host that
mounts it keeps control of its own logging. At ``INFO`` it logs one line per request whose
message is a JSON object (the fields are listed in :data:`REQUEST_FIELDS`, and documented on the
Observability page as a stable interface); the same fields are on the log record as
``record.waterfall_request`` (a dict), for a host's own formatter. :class:`JsonFormatter` writes
any log record as one JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
``message``; a request line has its fields at the top level instead of a ``message``.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ["REQUEST_FIELDS", "JsonFormatter"]

REQUEST_FIELDS: tuple[str, ...] = (
    "method",
    "id",
    "started_at",
    "route",
    "model",
    "provider",
    "upstream_model",
    "stream",
    "attempts",
    "status",
    "http_status",
    "ttfb_ms",
    "duration_ms",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost",
    "cost_unit",
    "reference_cost",
    "error",
)
"""The fields of the per-request line, in order (those of
:class:`~waterfall_asgi.ledger.UsageRecord`, after the HTTP ``method``)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per log record (see the module docs).

    >>> record = logging.LogRecord("waterfall_asgi", logging.INFO, "", 0, "hi %s", ("you",), None)
    >>> record.created = 0.0
    >>> JsonFormatter().format(record)
    '{"time": "1970-01-01T00:00:00.000Z", "level": "info", "logger": "waterfall_asgi", "message": "hi you"}'
    """  # noqa: E501

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        data: dict[str, Any] = {
            "time": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "waterfall_request", None)
        if isinstance(fields, dict):
            data["event"] = "request"
            data.update(fields)
        else:
            data["message"] = record.getMessage()
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)
