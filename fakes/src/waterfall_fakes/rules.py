"""Rules: faults that depend on the request rather than on its place in a script.

A :class:`Rule` says which requests it matches (by model glob, streaming or not, tools present,
headers' values, a regular expression over the messages, the path) and which behaviours they
get, and how often: every matching request, the ``nth`` one, the first ``times``, a seeded
fraction ``p`` of them, or those inside a time window. A fake's rules come from its config
(``FakeConfig.rules``), from Python (:meth:`FakeProvider.add_rule
<waterfall_fakes.provider.FakeProvider.add_rule>`) and from its control plane, as JSON of the
same shape::

    {"name": "flaky-small", "model": "fake-small*", "stream": true, "p": 0.2,
     "behaviours": "status:code=500"}

Every rule is checked against every request, whatever order the requests come in; each rule that
matches (and whose gate lets the request through) adds its behaviours.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .behaviours import Behaviour, BehaviourError, When, format_behaviours, parse_behaviours
from .catalog import message_text

__all__ = ["Draw", "Rule", "RuleStatus", "request_text"]


@dataclass(frozen=True)
class Draw:
    """One chance drawn for a request: by the gate ``gate`` (``rule:NAME``, ``script:INDEX`` or
    ``header:TEXT``), for the ``number``-th request that gate considered (from 0), the ``value``
    drawn in [0, 1), compared with ``p``: the request was hit when ``value < p``. The value is a
    function of the fake's seed, the gate and the number alone."""

    gate: str
    number: int
    value: float
    p: float

    @property
    def hit(self) -> bool:
        """Whether the draw let the behaviours apply."""
        return self.value < self.p

    def to_json(self) -> dict[str, Any]:
        """The draw as plain JSON data."""
        return {
            "gate": self.gate,
            "number": self.number,
            "value": self.value,
            "p": self.p,
            "hit": self.hit,
        }


def request_text(payload: Any) -> str:
    """The text a rule's ``messages`` pattern is searched in: the messages' contents (chat,
    Anthropic Messages, after its ``system``), the prompt (text completions) or the input
    (embeddings; the Responses API, after its ``instructions``, input items' contents
    included), one per line.

    >>> request_text({"instructions": "be brief", "input": [{"role": "user", "content": "hi"}]})
    'be brief\\nhi'
    """
    if not isinstance(payload, dict):
        return ""
    parts: list[str] = []
    for key in ("system", "instructions"):
        value = payload.get(key)
        if value:
            parts.append(message_text(value))
    messages = payload.get("messages")
    if isinstance(messages, list):
        parts += [message_text(m.get("content")) for m in messages if isinstance(m, dict)]
    for key in ("prompt", "input"):
        value = payload.get(key)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            for v in value:
                if isinstance(v, str):
                    parts.append(v)
                elif isinstance(v, dict) and "content" in v:
                    parts.append(message_text(v["content"]))
    return "\n".join(parts)


@dataclass(frozen=True)
class RuleStatus:
    """A rule a fake holds, and what it has done since the last reset: ``matched`` counts the
    matching requests inside its time window, ``applied`` those that got its behaviours.
    ``queued`` marks a rule made by :meth:`FakeProvider.queue
    <waterfall_fakes.provider.FakeProvider.queue>`, which goes away once spent."""

    rule: Rule
    matched: int
    applied: int
    queued: bool = False

    def to_json(self) -> dict[str, Any]:
        """The rule (behaviours in header text) and its counts, as plain JSON data."""
        data = self.rule.model_dump(mode="json", exclude={"behaviours"})
        data["behaviours"] = format_behaviours(list(self.rule.behaviours))
        return {**data, "matched": self.matched, "applied": self.applied, "queued": self.queued}


class Rule(BaseModel):
    """Behaviours for the requests that match, independently of the order they come in.

    Matching (every condition given must hold; none given: every request):

    - ``model``: a glob (``fake-*``, ``gpt-4o?``) over the request's ``model``;
    - ``stream``: whether the request asks for a stream;
    - ``tools``: whether it offers tools (a non-empty ``tools`` or ``functions``);
    - ``headers``: header name to a glob over its value (names in any case; a missing header
      never matches);
    - ``messages``: a regular expression searched in the request's text (see
      :func:`request_text`);
    - ``path``: a glob over the path (chat, text completions, embeddings, ``/v1/responses`` and
      ``/v1/messages`` are the paths that take behaviours).

    How often, among the matching requests (counted per rule): ``nth`` picks the nth one only
    (from 1; with ``times``, that many from the nth on), ``skip`` passes over the first ones,
    ``times`` caps how many get the behaviours (unset: no cap), ``p`` gives each a chance,
    drawn from the fake's seed, and ``start``/``end``/``since`` a time window, as for a
    :class:`~waterfall_fakes.behaviours.When` gate. ``name`` identifies the rule in the journal
    and the control plane (a fake names a rule without one).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, min_length=1)
    model: str | None = None
    stream: bool | None = None
    tools: bool | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    messages: str | None = None
    path: str | None = None
    nth: int | None = Field(default=None, ge=1)
    skip: int = Field(default=0, ge=0)
    times: int | None = Field(default=None, ge=0)
    p: float = Field(default=1.0, ge=0, le=1)
    start: float | None = Field(default=None, ge=0)
    end: float | None = Field(default=None, ge=0)
    since: Literal["start", "first"] = "start"
    behaviours: tuple[Behaviour, ...] = ()

    @field_validator("behaviours", mode="before")
    @classmethod
    def _parse_behaviours(cls, value: Any) -> Any:
        try:
            return tuple(parse_behaviours(value))
        except BehaviourError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("headers")
    @classmethod
    def _lower_names(cls, value: dict[str, str]) -> dict[str, str]:
        return {k.lower(): v for k, v in value.items()}

    @field_validator("messages")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        if self.nth is not None and self.skip:
            raise ValueError("give nth or skip, not both")
        if any(isinstance(b, When) for b in self.behaviours):
            raise ValueError("a rule's behaviours cannot hold a 'when' gate: use its own fields")
        return self

    def gate(self) -> When:
        """This rule's ``nth``, ``skip``, ``times``, ``p`` and window, as one gate."""
        skip, times = self.skip, self.times
        if self.nth is not None:
            skip = self.nth - 1
            times = 1 if times is None else times
        return When(
            p=self.p,
            times=times,
            skip=skip,
            start=self.start,
            end=self.end,
            since=self.since,
        )

    def matches(self, path: str, headers: dict[str, str], payload: Any) -> bool:
        """Whether a request (its path, lower-cased headers and parsed JSON body) matches."""
        if self.path is not None and not fnmatch.fnmatchcase(path, self.path):
            return False
        for name, pattern in self.headers.items():
            value = headers.get(name)
            if value is None or not fnmatch.fnmatchcase(value, pattern):
                return False
        req = payload if isinstance(payload, dict) else {}
        if self.model is not None:
            model = req.get("model")
            if not isinstance(model, str) or not fnmatch.fnmatchcase(model, self.model):
                return False
        if self.stream is not None and (req.get("stream") is True) != self.stream:
            return False
        if self.tools is not None and bool(req.get("tools") or req.get("functions")) != self.tools:
            return False
        return self.messages is None or re.search(self.messages, request_text(payload)) is not None
