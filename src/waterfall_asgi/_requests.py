"""What the middleware reads of a client's request, and how it checks it.

The path below the mount point (:func:`route_path`), the client key (:func:`authorize`), the
JSON body read within the size, time and depth limits (:func:`read_json`), the fields the
dialect requires and the types of ``stream`` and ``model`` (:func:`checked`), and the headers
passed on to the router (:func:`client_headers`). Whatever is echoed back of what a client sent
is cut to a bounded length (:func:`bounded`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._bodytimer import BodyTimer
from ._fastjson import decode_request
from .config import Limits
from .dialects import DIALECTS, Dialect
from .errors import RouterError
from .ledger import UsageRecord
from .router import _NOT_FORWARDED

__all__ = [
    "Disconnected",
    "authorize",
    "bounded",
    "checked",
    "client_headers",
    "read_json",
    "route_path",
]

logger = logging.getLogger("waterfall_asgi")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

_CHAT = DIALECTS["chat"]


class Disconnected(Exception):
    """The client went away before its request body had arrived."""


def route_path(scope: Scope) -> str:
    """The path below the mount point (``root_path``), as Starlette's routing sees it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


def authorize(scope: Scope, keys: tuple[Any, ...], dialect: Dialect = _CHAT) -> None:
    """Raise 401 ``invalid_api_key`` unless the request carries one of the client ``keys``
    (secrets), where ``dialect`` looks for it (none configured: every request may pass)."""
    if not keys:
        return
    token = dialect.client_key(scope["headers"]) or b""
    ok = False
    for key in keys:  # compare with every key, in constant time
        ok |= hmac.compare_digest(token, key.get_secret_value().encode())
    if not token or not ok:
        raise RouterError(
            401,
            f"Missing or invalid API key: {dialect.auth_hint}.",
            code="invalid_api_key",
            headers=[("www-authenticate", "Bearer")],
        )


async def read_json(
    scope: Scope, receive: Receive, limits: Limits, timer: BodyTimer
) -> dict[str, Any]:
    """The JSON object a ``POST`` sent, read within ``limits.max_body_bytes``, the ``timer``'s
    time and ``limits.max_json_depth`` (else a :class:`RouterError` says which; a client that
    leaves raises :class:`Disconnected`)."""
    if scope["method"] != "POST":
        raise RouterError(405, "Use POST.", code="method_not_allowed", headers=[("allow", "POST")])
    limit = limits.max_body_bytes
    for name, value in scope["headers"]:
        if name.lower() == b"content-length" and value.isdigit() and int(value) > limit:
            raise RouterError(
                413, f"Request body larger than {limit} bytes.", code="request_too_large"
            )
    body = bytearray()
    task = timer.start()  # (what asyncio.timeout does, on one timer for all requests)
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Disconnected
            body += message.get("body", b"")
            if len(body) > limit:
                raise RouterError(
                    413, f"Request body larger than {limit} bytes.", code="request_too_large"
                )
            if not message.get("more_body", False):
                break
    except asyncio.CancelledError:
        if timer.stop(task) and task.uncancel() == 0:
            raise RouterError(
                408,
                f"The request body did not arrive within {timer.seconds:g}s.",
                code="request_timeout",
                headers=[("connection", "close")],  # the rest of the body is not awaited
            ) from None
        raise
    finally:
        timer.stop(task)
    try:
        payload = decode_request(bytes(body), limits.max_json_depth)
    except ValueError as exc:
        raise RouterError(
            400, f"The request body is not valid JSON: {exc}.", code="invalid_json"
        ) from None
    if not isinstance(payload, dict):
        raise RouterError(400, "The request body must be a JSON object.", code="invalid_json")
    return payload


def checked(
    payload: dict[str, Any],
    endpoint: str,
    dialect: Dialect,
    limits: Limits,
    record: UsageRecord,
) -> tuple[bool, str | None]:
    """Whether the request asks for a stream, and the model it names (both noted on
    ``record``), once its required fields are there and ``stream`` and ``model`` are of their
    types (else a :class:`RouterError` says which)."""
    for required in dialect.routes[endpoint]:
        if required not in payload:
            raise RouterError(
                400,
                f"Missing required parameter: {required!r}.",
                code="missing_required_parameter",
                param=required,
            )
    stream = payload.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise RouterError(400, "'stream' must be a boolean.", code="invalid_type", param="stream")
    stream = bool(stream)
    if stream and endpoint in dialect.not_streamed:
        raise RouterError(
            400, f"{endpoint} cannot be streamed.", code="invalid_value", param="stream"
        )
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise RouterError(400, "'model' must be a string.", code="invalid_type", param="model")
    if model is not None and len(model) > limits.max_model_length:
        record.model = bounded(model)
        raise RouterError(
            400,
            f"'model' is longer than {limits.max_model_length} characters: {bounded(model)!r}.",
            code="invalid_value",
            param="model",
        )
    record.model, record.stream = model, stream
    return stream, model


# What the router never forwards (see forwarded_headers), dropped before the headers are
# decoded; but for Connection: what it names is dropped too, so the router must see it.
_NOT_DECODED = frozenset(name.encode() for name in _NOT_FORWARDED if name != "connection")


def client_headers(scope: Scope, limits: Limits) -> list[tuple[str, str]]:
    """The request's headers for the router, decoded, less those it would drop anyway, those
    larger than ``limits.max_header_bytes`` and those beyond ``limits.max_forwarded_headers``
    (each drop of the last two kinds logged, by header name)."""
    largest = limits.max_header_bytes
    headers: list[tuple[str, str]] = []
    oversized: list[str] = []
    for k, v in scope["headers"]:
        if len(k) + len(v) > largest:
            oversized.append(bounded(k.decode("latin-1"), 64))
        elif k.lower() not in _NOT_DECODED:
            headers.append((k.decode("latin-1"), v.decode("latin-1")))
    if oversized:
        logger.warning(
            "not forwarded upstream: %d header(s) over %d bytes (%s)",
            len(oversized),
            largest,
            ", ".join(oversized[:8]),
        )
    if len(headers) > limits.max_forwarded_headers:
        logger.warning(
            "not forwarded upstream: %d header(s) beyond the first %d",
            len(headers) - limits.max_forwarded_headers,
            limits.max_forwarded_headers,
        )
        del headers[limits.max_forwarded_headers :]
    return headers


def bounded(text: str, limit: int = 256) -> str:
    """``text``, cut to ``limit`` characters (marked with an ellipsis): for echoes of what a
    client sent, in messages and records."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
