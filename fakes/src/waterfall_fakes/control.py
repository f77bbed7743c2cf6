"""The control plane: read, reset and steer a running fake over HTTP, from any language.

Every fake served over HTTP (``waterfall-fakes serve``, :class:`~waterfall_fakes.FakeServer`,
:class:`~waterfall_fakes.FakeApp`, and :class:`~waterfall_fakes.FakeTransport` in-process)
answers these paths under the reserved prefix ``/_fake``, which no OpenAI route uses. Requests to
them are not recorded and do not move the script. Every answer is JSON with a ``"version"``
(:data:`CONTROL_VERSION`); a bad request gets an OpenAI-style error body.

=================================  =============================================================
``GET /_fake``                     what this fake is, and the paths below
``GET /_fake/journal``             the requests received and how each was answered (``?since=N``:
                                   from entry ``N`` on)
``POST /_fake/reset``              forget the journal, rewind the script and the rules' counts,
                                   put back the config's rules, empty the limiter and the queue
``GET /_fake/config``              the fake's current config (its API key hidden)
``GET /_fake/script``              the script, each step in header text, and how it ends
``PUT /_fake/script``              replace the script and play it from its first step (the
                                   journal and the rules stay)
``GET /_fake/rules``               the rules in force (queued entries included), with counts
``POST /_fake/rules``              add a rule, or a list of them (a rule's JSON shape)
``DELETE /_fake/rules``            remove every rule, the config's included (until a reset)
``DELETE /_fake/rules/NAME``       remove one rule
``GET /_fake/queue``               the queued entries not yet spent
``POST /_fake/queue``              queue behaviours for the next ``count`` matching requests
``DELETE /_fake/queue``            drop every queued entry
``GET /_fake/verdict``             the conduct verdict on the client, from the journal (query:
                                   the verdict's thresholds)
=================================  =============================================================
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote

from pydantic import ValidationError

from .behaviours import format_behaviours
from .catalog import dumps
from .journal import JOURNAL_VERSION, journal_json
from .provider import FakeProvider, Reply
from .rules import Rule

__all__ = ["CONTROL_PREFIX", "CONTROL_VERSION", "ControlError", "control_reply", "is_control_path"]

CONTROL_PREFIX = "/_fake"
"""The path prefix the control plane answers under."""

CONTROL_VERSION = JOURNAL_VERSION
"""The version of the control plane's JSON shapes."""


class ControlError(Exception):
    """A control plane request that cannot be served: its status, message and error code."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def is_control_path(path: str) -> bool:
    """Whether ``path`` belongs to the control plane."""
    return path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/")


def _json_reply(status: int, obj: Any, extra: tuple[tuple[str, str], ...] = ()) -> Reply:
    data = dumps(obj)
    headers = (
        ("content-type", "application/json"),
        ("content-length", str(len(data))),
        ("cache-control", "no-store"),
        *extra,
    )
    return Reply(status, headers, (data,))


def _error(exc: ControlError) -> Reply:
    kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
    body = {"error": {"message": exc.message, "type": kind, "param": None, "code": exc.code}}
    return _json_reply(exc.status, body)


def _query(text: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}


def _int_arg(args: dict[str, str], name: str, default: int) -> int:
    value = args.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ControlError(
            400, f"{name} must be an integer, got {value!r}.", "invalid_value"
        ) from None
    if number < 0:
        raise ControlError(400, f"{name} must be 0 or more, got {number}.", "invalid_value")
    return number


def _float_args(args: dict[str, str], names: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in names:
        if name in args:
            try:
                out[name] = float(args[name])
            except ValueError:
                raise ControlError(400, f"{name} must be a number.", "invalid_value") from None
    return out


def _body_json(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError:
        raise ControlError(400, "The body is not valid JSON.", "invalid_json") from None


def config_json(provider: FakeProvider) -> dict[str, Any]:
    """The fake's current config as ``GET /_fake/config`` serves it (the API key hidden)."""
    config = provider.config.model_dump(mode="json")
    if config.get("api_key") is not None:
        config["api_key"] = "***"
    return {"version": CONTROL_VERSION, "name": provider.config.name, "config": config}


def _index(provider: FakeProvider) -> dict[str, Any]:
    return {
        "version": CONTROL_VERSION,
        "name": provider.config.name,
        "requests": len(provider.requests),
        "endpoints": {
            f"{method} {CONTROL_PREFIX}{path}": (handler.__doc__ or "").rstrip(".")
            for path, methods in ROUTES.items()
            if path
            for method, handler in methods.items()
        },
    }


Handler = Callable[[FakeProvider, dict[str, str], bytes], Any]


def _journal(provider: FakeProvider, args: dict[str, str], body: bytes) -> Any:
    """The requests received and how each was answered (?since=N)."""
    return journal_json(provider, since=_int_arg(args, "since", 0))


def _reset(provider: FakeProvider, args: dict[str, str], body: bytes) -> Any:
    """Forget the journal, rewind the script and the rules, empty the limiter and the queue."""
    provider.reset()
    return {"version": CONTROL_VERSION, "reset": True}


def _config(provider: FakeProvider, args: dict[str, str], body: bytes) -> Any:
    """The fake's current config (its API key hidden)."""
    return config_json(provider)


def _verdict(provider: FakeProvider, args: dict[str, str], body: bytes) -> Any:
    """The conduct verdict on the client (query: its thresholds)."""
    from .verdict import ConductThresholds, judge_conduct

    try:
        thresholds = ConductThresholds(**_float_args(args, ConductThresholds.NAMES))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise ControlError(400, f"Bad thresholds: {problems}", "invalid_value") from None
    return judge_conduct(provider.requests, thresholds).to_json()


def _validation(exc: ValidationError, what: str) -> ControlError:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or what}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )
    return ControlError(400, f"Bad {what}: {problems}", f"invalid_{what}")


def _rules_json(provider: FakeProvider, queued: bool | None = None) -> dict[str, Any]:
    listed = [r for r in provider.rules() if queued is None or r.queued == queued]
    return {"version": CONTROL_VERSION, "rules": [r.to_json() for r in listed]}


def _status_of(provider: FakeProvider, name: str | None) -> dict[str, Any]:
    for status in provider.rules():
        if status.rule.name == name:
            return status.to_json()
    raise ControlError(404, f"No rule named {name!r}.", "rule_not_found")  # pragma: no cover


def _set_script(provider: FakeProvider, args: dict[str, str], body: bytes) -> Any:
    """Replace the script and play it from its first step (the journal and rules stay)."""
    data = _body_json(body)
    if not isinstance(data, dict) or not isinstance(data.get("script"), list):
        raise ControlError(
            400,
            'Send {"script": [step, ...]} and optionally "cycle" or "repeat_last": true.',
            "invalid_script",
        )
    unknown = sorted(set(data) - {"script", "cycle", "repeat_last"})
    if unknown:
        raise ControlError(400, f"Unknown field(s) {', '.join(unknown)}.", "invalid_script")
    flags = {k: data.get(k, False) for k in ("cycle", "repeat_last")}
    if not all(isinstance(v, bool) for v in flags.values()):
        raise ControlError(400, "cycle and repeat_last must be true or false.", "invalid_script")
    try:
        provider.set_script(data["script"], **flags)
    except ValidationError as exc:
        raise _validation(exc, "script") from None
    return _script_json(provider)


def _get_script(provider: FakeProvider, args: dict[str, str], body: bytes) -> Any:
    """The script, each step in header text, and how it ends."""
    return _script_json(provider)


def _script_json(provider: FakeProvider) -> dict[str, Any]:
    config = provider.config
    return {
        "version": CONTROL_VERSION,
        "script": [format_behaviours(list(step)) for step in config.script],
        "cycle": config.cycle,
        "repeat_last": config.repeat_last,
    }


def _list_rules(provider: FakeProvider, args: dict[str, str], body: bytes) -> Any:
    """The rules in force, queued entries included, with their counts."""
    return _rules_json(provider)


def _add_rules(provider: FakeProvider, args: dict[str, str], body: bytes) -> Any:
    """Add a rule, or a list of them."""
    data = _body_json(body)
    items = data if isinstance(data, list) else [data]
    if not items or not all(isinstance(item, dict) for item in items):
        raise ControlError(400, "Send a rule (a JSON object) or a list of them.", "invalid_rule")
    try:
        rules = [Rule.model_validate(item) for item in items]
    except ValidationError as exc:
        raise _validation(exc, "rule") from None
    added = [provider.add_rule(rule) for rule in rules]  # all valid: add them all
    return {"version": CONTROL_VERSION, "rules": [_status_of(provider, r.name) for r in added]}


def _clear_rules(provider: FakeProvider, args: dict[str, str], body: bytes) -> Any:
    """Remove every rule, the config's included (until a reset)."""
    provider.clear_rules()
    return {"version": CONTROL_VERSION, "cleared": True}


def _list_queue(provider: FakeProvider, args: dict[str, str], body: bytes) -> Any:
    """The queued entries not yet spent."""
    return _rules_json(provider, queued=True)


def _add_queue(provider: FakeProvider, args: dict[str, str], body: bytes) -> Any:
    """Queue behaviours for the next count matching requests."""
    data = _body_json(body)
    if not isinstance(data, dict) or "behaviours" not in data:
        raise ControlError(
            400,
            'Send {"behaviours": ..., "count": N} and any of a rule\'s matching fields.',
            "invalid_queue",
        )
    match = {k: v for k, v in data.items() if k not in ("behaviours", "count")}
    unknown = sorted(set(match) - _MATCH_FIELDS)
    if unknown:
        raise ControlError(
            400,
            f"Unknown field(s) {', '.join(unknown)}; a queued entry takes behaviours, count and "
            f"{', '.join(sorted(_MATCH_FIELDS))}.",
            "invalid_queue",
        )
    count = data.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ControlError(400, "count must be an integer, 0 or more.", "invalid_queue")
    try:
        rule = provider.queue(data["behaviours"], count, **match)
    except ValidationError as exc:
        raise _validation(exc, "queue") from None
    if count == 0:
        return {"version": CONTROL_VERSION, "queued": None}
    return {"version": CONTROL_VERSION, "queued": _status_of(provider, rule.name)}


def _clear_queue(provider: FakeProvider, args: dict[str, str], body: bytes) -> Any:
    """Drop every queued entry."""
    removed = [r.rule.name for r in provider.rules() if r.queued]
    for name in removed:
        if name is not None:
            provider.remove_rule(name)
    return {"version": CONTROL_VERSION, "cleared": len(removed)}


def _remove_rule(provider: FakeProvider, args: dict[str, str], body: bytes) -> Any:
    """Remove the rule (or queued entry) called NAME."""
    name = args["name"]
    if not provider.remove_rule(name):
        raise ControlError(404, f"No rule named {name!r}.", "rule_not_found")
    return {"version": CONTROL_VERSION, "removed": name}


def _describe(provider: FakeProvider, args: dict[str, str], body: bytes) -> Any:
    """What this fake is, and the paths of its control plane."""
    return _index(provider)


_MATCH_FIELDS = frozenset({"model", "stream", "tools", "headers", "messages", "path"})

ROUTES: dict[str, dict[str, Handler]] = {
    "": {"GET": _describe},
    "/journal": {"GET": _journal},
    "/reset": {"POST": _reset},
    "/config": {"GET": _config},
    "/script": {"GET": _get_script, "PUT": _set_script},
    "/rules": {"GET": _list_rules, "POST": _add_rules, "DELETE": _clear_rules},
    "/rules/NAME": {"DELETE": _remove_rule},
    "/queue": {"GET": _list_queue, "POST": _add_queue, "DELETE": _clear_queue},
    "/verdict": {"GET": _verdict},
}


def control_reply(provider: FakeProvider, method: str, path: str, query: str, body: bytes) -> Reply:
    """Answer one control plane request (``path`` under :data:`CONTROL_PREFIX`)."""
    sub = path[len(CONTROL_PREFIX) :].rstrip("/")
    name = None
    if sub.startswith("/rules/"):
        sub, name = "/rules/NAME", unquote(sub[len("/rules/") :])
    methods = ROUTES.get(sub)
    try:
        if methods is None:
            raise ControlError(404, f"Unknown control path {path}.", "unknown_url")
        handler = methods.get(method.upper())
        if handler is None:
            allowed = ", ".join(sorted(methods))
            exc = ControlError(405, f"Method {method} not allowed on {path}.", "method_not_allowed")
            reply = _error(exc)
            return Reply(reply.status, (*reply.headers, ("allow", allowed)), reply.chunks)
        args = _query(query)
        if name is not None:
            args["name"] = name
        result = handler(provider, args, body)
    except ControlError as exc:
        return _error(exc)
    return _json_reply(200, result)
