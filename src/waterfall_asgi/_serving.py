"""What ``waterfall-asgi serve`` adds to uvicorn to hold up under hostile clients.

The middleware bounds what it reads itself (a request body within ``limits.body_timeout``, its
size, its JSON); what happens before a request reaches it belongs to the server. uvicorn bounds
the size of a request's headers (``h11_max_incomplete_event_size``), the connections it serves
at once (``limit_concurrency``), an idle keep-alive connection (``timeout_keep_alive``) and a
shutdown (``timeout_graceful_shutdown``), but not the time a client takes to send its headers,
nor how long a new connection may stay silent. :func:`guarded_h11` makes an HTTP/1.1 protocol
class that does: a connection whose request headers have not all arrived within
``header_timeout`` seconds (from its opening, or from the first byte of a next request) is
answered ``408`` (if it sent anything) and closed. It also answers a malformed or oversized
request head with an OpenAI-style JSON error instead of uvicorn's plain text.
"""

from __future__ import annotations

import asyncio
import copy
import re
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import error_body

__all__ = ["guarded_h11", "serve_logging"]


def _response(status: int, reason: str, message: str, code: str) -> bytes:
    body = error_body(message, "invalid_request_error", code)
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_BLANK_LINE = re.compile(rb"\n\r?\n")  # the end of a head, as h11 finds it
_LINGER = 2.0  # seconds a refused connection is read (and dropped) before it is closed


class _GuardedH11(H11Protocol):
    header_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False  # an error was sent: what the client still sends is dropped
        self._head = 0  # bytes of the current request's head received so far
        self._tail = b""  # its last bytes (a blank line may straddle two reads)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self.conn.their_state is h11.IDLE:  # (a head is arriving: its bytes are counted)
            if self._header_timer is None:
                self._arm()  # the first bytes of a next request on a kept-alive connection
            # h11 refuses an unfinished head over the limit, but not one that arrives whole
            probe = self._tail + data
            end = _BLANK_LINE.search(probe)
            size = len(data) if end is None else end.end() - len(self._tail)
            if self._head + size > self._max_head:
                self._disarm()
                self.send_400_response("too large")
                return
            if end is None:
                self._head, self._tail = self._head + size, probe[-2:]
            else:
                self._head, self._tail = 0, b""
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the whole head has arrived (or failed)
            self._disarm()

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # part of a request: say why it is refused
            self.logger.warning("Request headers not received within %gs.", self.header_timeout)
            self._refuse(
                _response(
                    408,
                    "Request Timeout",
                    f"The request headers did not arrive within {self.header_timeout:g}s.",
                    "request_timeout",
                )
            )
        else:
            self.transport.close()

    def _refuse(self, response: bytes) -> None:
        """Send ``response`` and close, lingering: a client still sending gets the answer
        rather than a reset (what arrives meanwhile is dropped; closed after 2 s at most)."""
        self._refused = True
        transport = self.transport
        transport.write(response)
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(_LINGER, transport.close)

    @property
    def _max_head(self) -> int:
        return self.conn._max_incomplete_event_size

    def send_400_response(self, msg: str) -> None:
        buffered = len(self.conn.trailing_data[0])
        if msg == "too large" or buffered >= self._max_head:
            status, reason = 431, "Request Header Fields Too Large"
            message, code = "The request headers are too large.", "headers_too_large"
        else:
            status, reason, message, code = 400, "Bad Request", msg, "invalid_request"
        self._refuse(_response(status, reason, message, code))


def guarded_h11(header_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol class, with a ``header_timeout`` (seconds) on each request's
    head (pass it as ``uvicorn.Config(http=...)``)."""
    return type("GuardedH11Protocol", (_GuardedH11,), {"header_timeout": header_timeout})


def serve_logging(level: str, log_format: str = "text") -> dict[str, Any]:
    """uvicorn's logging config, plus the router's own logger (``waterfall_asgi``: one JSON
    line per request at ``info``, the ledger's start-up lines, warnings) at ``level``, on
    stderr in uvicorn's format; with ``log_format="json"``, every line (uvicorn's access and
    error lines too) is one JSON object (see :class:`~waterfall_asgi.logs.JsonFormatter`)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    if log_format == "json":
        for formatter in config["formatters"]:
            config["formatters"][formatter] = {"()": "waterfall_asgi.logs.JsonFormatter"}
    config["loggers"]["waterfall_asgi"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config
