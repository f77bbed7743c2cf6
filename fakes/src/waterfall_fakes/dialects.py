"""The three dialects a fake speaks: what each one's requests, answers, streams and errors look
like, and the tool calls a fake makes in each.

A fake answers the same model with the same words in every dialect; only the shapes differ:

- ``chat``: ``POST /v1/chat/completions``, usage ``prompt_tokens`` and ``completion_tokens``;
- ``completions`` (``POST /v1/completions``) and ``embeddings`` (``POST /v1/embeddings``);
- ``responses``: ``POST /v1/responses``, usage ``input_tokens`` and ``output_tokens``;
- ``messages``: ``POST /v1/messages`` (Anthropic), usage ``input_tokens`` and
  ``output_tokens``.

Token counts are exact by construction: a message (a Responses input item, Anthropic's
``system`` prompt) counts 3 plus its whitespace-separated words (:func:`count_input_tokens`), one
word of a reply is one output token, and one fragment of a tool call's arguments
(:func:`argument_fragments`) is one output token.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from .catalog import dumps, message_text, reply_words

__all__ = [
    "ANTHROPIC_ERROR_TYPES",
    "API_PATHS",
    "FRAGMENT_CHARS",
    "Api",
    "ToolCallPlan",
    "anthropic_error",
    "anthropic_error_type",
    "argument_fragments",
    "count_input_tokens",
    "offered_tools",
    "plan_tool_call",
    "tool_arguments",
    "tool_choice_forces",
]

Api: TypeAlias = Literal["chat", "completions", "embeddings", "responses", "messages"]
"""A dialect a fake speaks, named by its API."""

API_PATHS: dict[str, Api] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
    "/v1/messages": "messages",
}
"""The path each dialect is served on."""

FRAGMENT_CHARS = 8
"""A tool call's arguments are streamed in fragments of this many characters (the last one may
be shorter); each fragment counts as one output token."""

ANTHROPIC_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
"""Anthropic's error ``type`` for each status (another 4xx: ``invalid_request_error``, another
5xx: ``api_error``)."""


def anthropic_error_type(status: int) -> str:
    """The ``error.type`` Anthropic gives an answer of ``status``.

    >>> anthropic_error_type(529), anthropic_error_type(503), anthropic_error_type(422)
    ('overloaded_error', 'api_error', 'invalid_request_error')
    """
    if status in ANTHROPIC_ERROR_TYPES:
        return ANTHROPIC_ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_error(type_: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    """An error body in Anthropic's shape."""
    body: dict[str, Any] = {"type": "error", "error": {"type": type_, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


# -- counting ----------------------------------------------------------------------------------
def _text(value: Any) -> str:
    """The text of a content value: a string, or its parts' (and nested results') text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = [_text(p) for p in value]
        return " ".join(p for p in parts if p)
    if isinstance(value, dict):
        for key in ("text", "content", "output"):
            if key in value:
                return _text(value[key])
        if "input" in value and isinstance(value["input"], dict):  # an Anthropic tool_use block
            return dumps(value["input"]).decode()
        if isinstance(value.get("arguments"), str):  # a Responses function_call item
            return str(value["arguments"])
    return ""


def count_input_tokens(api: Api, request: dict[str, Any]) -> int:
    """The fakes' exact input token count of a request in ``api``: 3 per message plus one per
    whitespace-separated word.

    Chat: its ``messages``. Responses API: ``instructions`` (one message) and ``input`` (a string
    is one message; each item of a list is one). Anthropic Messages: ``system`` (one message when
    given) and ``messages`` (a content block's text, a tool result's content and a tool use's
    input JSON count as words).

    >>> count_input_tokens("responses", {"input": "two words", "instructions": "be brief"})
    10
    >>> count_input_tokens("messages", {"system": "be brief",
    ...     "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    9
    """
    items: list[Any] = []
    if api == "responses":
        if request.get("instructions"):
            items.append(request["instructions"])
        given = request.get("input")
        items += given if isinstance(given, list) else [] if given is None else [given]
    elif api == "messages":
        if request.get("system"):
            items.append(request["system"])
        messages = request.get("messages")
        items += messages if isinstance(messages, list) else []
    else:
        messages = request.get("messages")
        items += [
            m.get("content") if isinstance(m, dict) else m
            for m in (messages if isinstance(messages, list) else [])
        ]
        return sum(3 + len(message_text(c).split()) for c in items)
    return sum(3 + len(_text(i).split()) for i in items)


# -- tools -------------------------------------------------------------------------------------
def offered_tools(api: Api, request: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The function tools a request offers, as (name, parameter schema), in order.

    Chat: ``tools[].function`` (``{"type": "function", "function": {"name", "parameters"}}``)
    and the older ``functions``; Responses API: ``tools[]`` of type ``function`` (``name`` and
    ``parameters`` on the tool itself); Anthropic Messages: ``tools[]`` with an ``input_schema``
    (server tools, which have none, are left out).
    """
    tools = request.get("tools")
    out: list[tuple[str, dict[str, Any]]] = []
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict):
            continue
        spec: Any = None
        schema_key = "parameters"
        if api == "chat" and tool.get("type") == "function":
            spec = tool.get("function")
        elif api == "responses" and tool.get("type") == "function":
            spec = tool
        elif api == "messages" and "input_schema" in tool:
            spec, schema_key = tool, "input_schema"
        if isinstance(spec, dict) and isinstance(spec.get("name"), str) and spec["name"]:
            schema = spec.get(schema_key)
            out.append((spec["name"], schema if isinstance(schema, dict) else {}))
    functions = request.get("functions") if api == "chat" else None
    for fn in functions if isinstance(functions, list) else []:
        if isinstance(fn, dict) and isinstance(fn.get("name"), str) and fn["name"]:
            schema = fn.get("parameters")
            out.append((fn["name"], schema if isinstance(schema, dict) else {}))
    return out


def tool_choice_forces(api: Api, request: dict[str, Any]) -> tuple[bool, str | None]:
    """Whether the request's ``tool_choice`` requires a tool call, and which tool it names.

    Chat and Responses: ``"required"``, or a named function (``{"type": "function",
    "function": {"name": ...}}`` in chat, ``{"type": "function", "name": ...}`` in Responses).
    Anthropic Messages: ``{"type": "any"}`` or ``{"type": "tool", "name": ...}``.

    >>> tool_choice_forces("messages", {"tool_choice": {"type": "tool", "name": "get"}})
    (True, 'get')
    >>> tool_choice_forces("chat", {"tool_choice": "auto"})
    (False, None)
    """
    choice = request.get("tool_choice")
    if choice == "required" and api in ("chat", "responses"):
        return True, None
    if not isinstance(choice, dict):
        return False, None
    kind = choice.get("type")
    if api == "messages":
        if kind == "any":
            return True, None
        if kind == "tool" and isinstance(choice.get("name"), str):
            return True, choice["name"]
        return False, None
    if kind == "function":
        fn = choice.get("function") if api == "chat" else choice
        name = fn.get("name") if isinstance(fn, dict) else None
        return True, name if isinstance(name, str) else None
    return False, None


def tool_arguments(schema: dict[str, Any], seed: int, number: int, name: str) -> dict[str, Any]:
    """Arguments for a call to the tool ``name``, made from its parameter schema: one value for
    every property, in order (an ``enum``'s first value; an integer or a number from the seed and
    request number; ``true``; an empty array or object; else two of the fakes' words).

    >>> schema = {"properties": {"unit": {"enum": ["c", "f"]}, "ok": {"type": "boolean"}}}
    >>> tool_arguments(schema, 0, 0, "get")
    {'unit': 'c', 'ok': True}
    """
    props = schema.get("properties")
    out: dict[str, Any] = {}
    for i, (key, spec) in enumerate(props.items() if isinstance(props, dict) else []):
        spec = spec if isinstance(spec, dict) else {}
        kind = spec.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), None)
        digest = hashlib.sha256(f"{seed}:{number}:{name}:{key}".encode()).digest()
        value: Any
        if isinstance(spec.get("enum"), list) and spec["enum"]:
            value = spec["enum"][0]
        elif kind == "integer":
            value = digest[0] % 100
        elif kind == "number":
            value = digest[0] % 100 / 4
        elif kind == "boolean":
            value = True
        elif kind == "array":
            value = []
        elif kind == "object":
            value = {}
        else:
            value = " ".join(reply_words(seed, number, i, f"{name}:{key}".encode(), 2))
        out[str(key)] = value
    return out


def argument_fragments(arguments: str) -> list[str]:
    """``arguments`` cut into the fragments a stream sends (:data:`FRAGMENT_CHARS` characters
    each, never inside a character); each is one output token.

    >>> argument_fragments('{"city":"Paris"}')
    ['{"city":', '"Paris"}']
    """
    return [arguments[i : i + FRAGMENT_CHARS] for i in range(0, len(arguments), FRAGMENT_CHARS)]


@dataclass(frozen=True)
class ToolCallPlan:
    """The tool call a fake answers with: the tool's ``name``, its ``arguments`` (compact JSON
    text), the ids it is sent with and the fragments it is streamed in."""

    name: str
    arguments: str
    call_id: str
    item_id: str

    @property
    def fragments(self) -> list[str]:
        """The streamed fragments of :attr:`arguments`, one output token each."""
        return argument_fragments(self.arguments)

    @property
    def tokens(self) -> int:
        """The output tokens of the call."""
        return len(self.fragments)

    @property
    def input(self) -> dict[str, Any]:
        """The arguments as an object (Anthropic's ``input``)."""
        parsed: dict[str, Any] = json.loads(self.arguments)
        return parsed


def plan_tool_call(
    api: Api,
    request: dict[str, Any],
    wanted: bool,
    name: str | None,
    arguments: str | None,
    seed: int,
    number: int,
) -> ToolCallPlan | None:
    """The tool call to answer ``request`` with, if any: when a ``tool_call`` behaviour asked
    (``wanted``, with its ``name`` and ``arguments``) or the ``tool_choice`` requires one, and
    the request offers a tool (``tool_choice: none`` never gets a call)."""
    tools = offered_tools(api, request)
    choice = request.get("tool_choice")
    if not tools or choice == "none" or (isinstance(choice, dict) and choice.get("type") == "none"):
        return None
    forced, forced_name = tool_choice_forces(api, request)
    if not (wanted or forced):
        return None
    names = dict(tools)
    pick = name if name in names else forced_name if forced_name in names else tools[0][0]
    if arguments is None or not wanted:
        args = tool_arguments(names[pick], seed, number, pick)
        text = dumps(args).decode()
    else:
        text = dumps(json.loads(arguments)).decode()
    digest = hashlib.sha256(f"{seed}:{number}:{pick}".encode()).hexdigest()
    prefix = {"chat": "call_", "responses": "call_", "messages": "toolu_"}.get(api, "call_")
    return ToolCallPlan(pick, text, f"{prefix}{digest[:24]}", f"fc_{digest[24:48]}")
