"""Mid-stream continuation: a chat stream cut or stalled after it began, finished elsewhere.

Off by default (``policy.continue_streams``). When an accepted chat stream fails after it began
(cut, stalled, or closed in the middle of its answer), and a further entry of the request's plan
has a model that declares the capability ``prefill`` (it continues an assistant message given
last), the router sends that entry the original request plus the text already relayed, as a
trailing assistant message, and relays its continuation into the same client stream.

The client sees one stream: each event of the continuation is decoded and written again with the
``id``, ``created`` and ``model`` of the first part, without the ``role`` its first delta repeats
(an event left with nothing to say is dropped), and, when the router asked for usage on the
client's behalf, without its usage-only chunk. The continuation's events are written as plain
``data:`` lines (its comments and ``event:``/``id:`` lines are not passed on).

Only plain text continues: one choice (``n`` absent or 1), text deltas only (no tool call or
function call in flight, no refusal), no finish reason yet, and every relayed event whole and
readable. Otherwise, or when no entry can continue (none declares ``prefill``, every one is
cooling or fails, or it rejects the prefill with a 4xx), the client gets the first failure's
clean error event, as without continuation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._fastjson import decode, encoder
from .config import Deployment, RouterConfig
from .errors import RouterError
from .router import Attempt, Exhausted, Router, Served
from .sse import SSEParser
from .usage import usage_only_chunk

__all__ = ["Continuation", "Relayed", "relayed_text", "rewrite_events"]

_ENCODE = encoder(ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Relayed:
    """What a stream's first part said, as far as a continuation needs it."""

    text: str
    """The text of its content deltas, joined: the prefill."""
    id: str | None
    created: int | None
    model: str | None


def relayed_text(pieces: Iterable[bytes]) -> Relayed | None:
    """The text the whole events ``pieces`` relayed, and the first part's ``id``, ``created``
    and ``model``; ``None`` when the stream cannot be continued (more than one choice, a tool
    call or function call or refusal in flight, a finish reason already given, an error, or an
    event that is not readable JSON).

    >>> relayed_text([b'data: {"id":"c1","created":7,"model":"m","choices":'
    ...               b'[{"index":0,"delta":{"role":"assistant","content":"Hel"}}]}\\n\\n',
    ...               b'data: {"choices":[{"index":0,"delta":{"content":"lo"}}]}\\n\\n'])
    Relayed(text='Hello', id='c1', created=7, model='m')
    """
    parser = SSEParser()
    text: list[str] = []
    id_: str | None = None
    created: int | None = None
    model: str | None = None
    for piece in pieces:
        for event in parser.feed(piece):
            try:
                obj = decode(event.data)
            except ValueError:
                return None
            if not isinstance(obj, dict) or "error" in obj:
                return None
            if id_ is None and isinstance(obj.get("id"), str) and obj["id"]:
                id_ = obj["id"]
            if created is None and type(obj.get("created")) is int:
                created = obj["created"]
            if model is None and isinstance(obj.get("model"), str) and obj["model"]:
                model = obj["model"]
            choices = obj.get("choices")
            if not isinstance(choices, list):
                return None
            for choice in choices:
                if not _plain_text(choice, text):
                    return None
    if parser.oversized or parser.buffered:  # an event it could not read whole
        return None
    return Relayed("".join(text), id_, created, model)


def _plain_text(choice: Any, text: list[str]) -> bool:
    """Add the content of one streamed choice to ``text``; whether it is plain text that may
    be continued."""
    if not isinstance(choice, dict) or choice.get("index", 0) != 0:
        return False
    if choice.get("finish_reason") is not None:
        return False
    delta = choice.get("delta")
    if delta is None:
        return True
    if not isinstance(delta, dict):
        return False
    for key, value in delta.items():
        if key == "content":
            if value is not None and not isinstance(value, str):
                return False
            if value:
                text.append(value)
        elif key in ("tool_calls", "function_call", "refusal"):
            if value:  # (null or empty: nothing in flight)
                return False
        elif key != "role":
            continue  # other keys (reasoning, annotations, ...) do not make text
    return True


def rewrite_events(whole: bytes, head: Relayed, strip_usage: bool) -> bytes:
    """The whole events ``whole`` of a continuation, as the client's one stream goes on: each
    JSON chunk with the first part's ``id``, ``created`` and ``model``, no ``role`` in its
    deltas, and dropped when nothing is left to say (or, with ``strip_usage``, when it is the
    usage-only chunk); ``[DONE]`` and other data as they are."""
    out: list[bytes] = []
    for event in SSEParser().feed(whole):
        data = event.data
        if data == "[DONE]":
            out.append(b"data: [DONE]\n\n")
            continue
        try:
            obj = decode(data)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            out.append(_data(data))
            continue
        if strip_usage and usage_only_chunk(data):
            continue
        if "error" not in obj:
            if head.id is not None and "id" in obj:
                obj["id"] = head.id
            if head.created is not None and "created" in obj:
                obj["created"] = head.created
            if head.model is not None and "model" in obj:
                obj["model"] = head.model
            choices = obj.get("choices")
            if isinstance(choices, list) and choices:
                kept = [c for c in choices if _says_something(c)]
                if not kept and not isinstance(obj.get("usage"), dict):
                    continue
                obj["choices"] = kept
        out.append(b"data: " + _ENCODE(obj).encode() + b"\n\n")
    return b"".join(out)


def _data(data: str) -> bytes:
    return b"".join(b"data: " + line.encode() + b"\n" for line in data.split("\n")) + b"\n"


def _says_something(choice: Any) -> bool:
    """Drop the ``role`` of a continuation's delta; whether the choice still says anything."""
    if not isinstance(choice, dict):
        return True
    delta = choice.get("delta")
    if isinstance(delta, dict):
        delta.pop("role", None)
        if any(value not in (None, "", [], {}) for value in delta.values()):
            return True
    return choice.get("finish_reason") is not None or bool(choice.get("logprobs"))


class Continuation:
    """How to continue one request's stream: the router, the request as sent upstream, and its
    plan. :meth:`run` asks the entries after the one that served it, among those whose model
    declares ``prefill``."""

    __slots__ = ("client_headers", "endpoint", "label", "payload", "plan", "router")

    def __init__(
        self,
        router: Router,
        label: str,
        plan: Sequence[Deployment],
        endpoint: str,
        payload: Mapping[str, Any],
        client_headers: Sequence[tuple[str, str]],
    ) -> None:
        self.router = router
        self.label = label
        self.plan = list(plan)
        self.endpoint = endpoint
        self.payload = payload
        self.client_headers = client_headers

    @staticmethod
    def possible(
        config: RouterConfig, endpoint: str, payload: Mapping[str, Any], plan: Sequence[Deployment]
    ) -> bool:
        """Whether a stream of this request could ever be continued: the policy allows it, it
        is a chat request for one choice, and some entry after the first declares ``prefill``."""
        if not config.policy.continue_streams or endpoint != "/chat/completions":
            return False
        n = payload.get("n")
        if n is not None and n != 1:
            return False
        return any(_prefills(config, d) for d in plan[1:])

    def stall(self, deployment: Deployment) -> float:
        """The stall timeout of ``deployment``'s provider."""
        return self.router.config.providers[deployment.provider].timeouts.stall

    def after(self, served: Deployment) -> list[Deployment]:
        """The entries that may continue a stream ``served`` was serving, in plan order."""
        config = self.router.config
        keys = [d.key for d in self.plan]
        start = keys.index(served.key) + 1 if served.key in keys else len(keys)
        return [d for d in self.plan[start:] if _prefills(config, d)]

    async def run(self, served: Deployment, text: str) -> tuple[Served | None, list[Attempt]]:
        """An accepted stream that continues ``text`` (the prefill; none when it is empty),
        from an entry after ``served``, and the attempts made for it; ``None`` when none would
        (every one passed over, failed, or refused)."""
        entries = self.after(served)
        messages = self.payload.get("messages")
        if not entries or not isinstance(messages, list):
            return None, []
        if text:
            messages = [*messages, {"role": "assistant", "content": text}]
        payload = {**self.payload, "messages": messages}
        try:
            continued = await self.router.run(
                self.label, entries, self.endpoint, payload, self.client_headers, True
            )
        except Exhausted as exc:  # every entry passed over or failed
            return None, exc.attempts
        except RouterError:  # pragma: no cover - run() raises Exhausted only
            return None, []
        if continued.complete or continued.response.status >= 300:  # refused (a 4xx), or JSON
            await continued.aclose()
            return None, continued.attempts
        return continued, continued.attempts


def _prefills(config: RouterConfig, deployment: Deployment) -> bool:
    info = config.models.get(deployment.model)
    return info is not None and "prefill" in info.capabilities
