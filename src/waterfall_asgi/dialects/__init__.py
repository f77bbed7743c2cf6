"""Dialects: the APIs the router speaks, each behind one small interface.

A :class:`Dialect` says everything about an API that the middleware, the router and the relay
need, so that none of them knows any API's shapes:

- its routes (:attr:`Dialect.routes`: each path below the prefix, with the fields a request to it
  must have) and whether it streams;
- how usage is asked for (:meth:`Dialect.usage_request`) and read, from a stream
  (:meth:`Dialect.stream_observer`) or a whole body (:meth:`Dialect.observe_body`);
- how a stream proves it is complete (:attr:`~waterfall_asgi.usage.UsageResult.complete`: its
  terminal event came), and whether one that closed without it had said all anyway
  (:meth:`Dialect.answered`; then :attr:`Dialect.terminal` is appended);
- what its error event and error body look like (:meth:`Dialect.error_event`,
  :meth:`Dialect.error_body`), and which first event means the attempt failed
  (:meth:`Dialect.failed_first_event`);
- how a client authenticates and how an upstream is sent its key
  (:meth:`Dialect.client_key`, :meth:`Dialect.upstream_headers`).

Three are built in (:data:`DIALECTS`): ``chat`` (OpenAI Chat Completions, with the legacy text
completions and embeddings routes), ``responses`` (the OpenAI Responses API) and ``messages``
(Anthropic Messages). A provider says which it speaks (``apis``); the router never translates
between them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Protocol

from waterfall_asgi.errors import error_body
from waterfall_asgi.sse import SSEEvent
from waterfall_asgi.usage import UsageResult

__all__ = [
    "DIALECTS",
    "ChatDialect",
    "Dialect",
    "MessagesDialect",
    "ResponsesDialect",
    "StreamReader",
    "dialect_named",
]


class StreamReader(Protocol):
    """What a dialect's stream observer is: fed the whole events of a stream as the relay hands
    them over (any chunking; it never raises), it keeps :attr:`result` up to date."""

    result: UsageResult

    def feed(self, chunk: bytes) -> None:
        """Observe ``chunk``; never raises."""
        ...

    @property
    def buffered(self) -> int:
        """Bytes held for an event not finished yet (bounded)."""
        ...


class Dialect:
    """One API the router speaks. Subclasses set the class attributes and override what
    differs; the defaults are OpenAI's (Bearer keys, ``{"error": {...}}`` bodies)."""

    name: ClassVar[str] = ""
    """As ``apis`` in a provider's config names it: ``chat``, ``responses``, ``messages``."""
    routes: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    """Each path below the prefix (``/chat/completions``) and the fields its requests need."""
    not_streamed: ClassVar[frozenset[str]] = frozenset()
    """The routes that cannot stream (``/embeddings``)."""
    terminal: ClassVar[bytes | None] = None
    """What the relay appends to a stream that closed without its terminal event but had said
    all (:meth:`answered`); ``None``: such a stream is incomplete."""
    terminal_name: ClassVar[str] = ""
    """The terminal event, as a record's ``error`` names it (``no [DONE]``)."""

    @property
    def incomplete_message(self) -> str:
        """The message of the error event that ends a stream closed without its end."""
        return f"The upstream stream ended without {self.terminal_name}."

    def usage_request(
        self, payload: Mapping[str, Any], stream: bool
    ) -> tuple[dict[str, Any], bool]:
        """The payload to send upstream, with usage asked for if the dialect needs asking, and
        whether the router added that (then the relay removes what only it asked for)."""
        return dict(payload), False

    def stream_observer(self, request_id: str | None = None) -> StreamReader:
        """A new observer for one stream of this dialect."""
        raise NotImplementedError

    def observe_body(self, body: bytes) -> UsageResult:
        """What a whole (non-stream) JSON answer says; ``complete`` when it is a JSON object."""
        raise NotImplementedError

    def answered(self, result: UsageResult, choices: int, usage: bool) -> bool:
        """Whether a stream that closed cleanly without its terminal event had said all it had
        to say (``choices``: how many answers were asked for; ``usage``: whether usage was)."""
        return False

    def failed_first_event(self, event: SSEEvent) -> bool:
        """Whether a stream's first event says the attempt failed (the request falls through)."""
        raise NotImplementedError

    def error_event(
        self,
        message: str,
        code: str,
        type_: str = "upstream_error",
        *,
        seen: UsageResult | None = None,
    ) -> bytes:
        """The SSE event that ends a stream the router gives up on, in this dialect's shape
        (``seen``: what the stream said before, for a dialect whose events are numbered)."""
        return b"data: " + error_body(message, type_, code) + b"\n\n"

    def error_body(
        self, status: int, message: str, type_: str, code: str | None, param: str | None = None
    ) -> bytes:
        """The JSON body of an error the router answers with itself (``status`` is its HTTP
        status). Always has ``error.message``, ``error.type`` and ``error.code``."""
        return error_body(message, type_, code, param)

    def client_key(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
        """The key a client sent (``None``: none in this dialect's ways): by default the token
        of ``Authorization: Bearer``."""
        given = None
        for name, value in headers:
            if name.lower() == b"authorization":
                given = value
        if given is None:
            return None
        scheme, _, token = given.partition(b" ")
        return token.strip() if scheme.lower() == b"bearer" and token.strip() else b""

    auth_hint: ClassVar[str] = "send 'Authorization: Bearer <key>'"
    """How a client of this dialect sends its key, for the 401's message."""

    def upstream_headers(self, key: str | None) -> dict[str, str]:
        """The headers (names lower-case) that carry a provider's ``key`` upstream, and any the
        dialect always sends (:meth:`default_headers` are only sent when the client did not)."""
        return {} if key is None else {"authorization": f"Bearer {key}"}

    def default_headers(self) -> dict[str, str]:
        """Headers sent upstream unless the client sent its own (names lower-case)."""
        return {}

    def __repr__(self) -> str:
        return f"<dialect {self.name}>"


# (each subclasses Dialect, defined above)
from waterfall_asgi.dialects.chat import ChatDialect  # noqa: E402
from waterfall_asgi.dialects.messages import MessagesDialect  # noqa: E402
from waterfall_asgi.dialects.responses import ResponsesDialect  # noqa: E402

DIALECTS: Mapping[str, Dialect] = {
    d.name: d for d in (ChatDialect(), ResponsesDialect(), MessagesDialect())
}
"""The built-in dialects, by name."""


def dialect_named(name: str) -> Dialect:
    """The built-in dialect called ``name`` (``KeyError`` if there is none)."""
    return DIALECTS[name]
