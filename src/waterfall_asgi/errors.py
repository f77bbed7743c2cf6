"""OpenAI-style errors, ``{"error": {"message", "type", "param", "code"}}``, with their status."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

__all__ = ["RouterError", "error_body", "send_error"]

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    """The JSON bytes of an OpenAI-style error.

    >>> error_body("No such model.", "invalid_request_error", "model_not_found")[:40]
    b'{"error":{"message":"No such model.","ty'
    """
    payload = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


class RouterError(Exception):
    """An error the router answers with itself (never an upstream's answer)."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        *,
        param: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = list(headers)

    def body(self) -> bytes:
        """The error as JSON bytes."""
        return error_body(self.message, self.type, self.code, self.param)


async def send_error(
    send: Send,
    error: RouterError,
    extra: Iterable[tuple[str, str]] = (),
    shape: Callable[[int, str, str, str | None, str | None], bytes] | None = None,
) -> None:
    """Answer with ``error`` as a complete JSON response: its :meth:`~RouterError.body`, or
    ``shape(status, message, type, code, param)`` (a dialect's error body)."""
    body = (
        error.body()
        if shape is None
        else shape(error.status, error.message, error.type, error.code, error.param)
    )
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.encode("latin-1"), v.encode("latin-1")) for k, v in (*error.headers, *extra)),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
