"""The control plane: read, reset and steer a running fake over HTTP, from any language.

Every fake served over HTTP (``waterfall-fakes serve``, :class:`~waterfall_fakes.FakeServer`,
:class:`~waterfall_fakes.FakeApp`, and :class:`~waterfall_fakes.FakeTransport` in-process)
answers these paths under the reserved prefix ``/_fake``, which no OpenAI route uses. Requests to
them are not recorded and do not move the script. Every answer is JSON with a ``"version"``
(:data:`CONTROL_VERSION`); a bad request gets an OpenAI-style error body.

============================  ==================================================================
``GET /_fake``                what this fake is and the paths below
``GET /_fake/journal``        the requests received and how each was answered (``?since=N``:
                              from entry ``N`` on)
``POST /_fake/reset``         forget the journal, rewind the script and the rules' counts, empty
                              the rate limiter and the queue
``GET /_fake/config``         the fake's current config (its API key hidden)
``GET /_fake/verdict``        the conduct verdict on the client, from the journal (query:
                              the verdict's thresholds)
============================  ==================================================================
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from pydantic import ValidationError

from .catalog import dumps
from .journal import JOURNAL_VERSION, journal_json
from .provider import FakeProvider, Reply

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
    paths = {
        "journal": "GET",
        "reset": "POST",
        "config": "GET",
        "verdict": "GET",
    }
    return {
        "version": CONTROL_VERSION,
        "name": provider.config.name,
        "requests": len(provider.requests),
        "endpoints": {
            name: {"method": method, "path": f"{CONTROL_PREFIX}/{name}"}
            for name, method in paths.items()
        },
    }


Handler = Callable[[FakeProvider, dict[str, str], bytes], Any]


def _journal(provider: FakeProvider, args: dict[str, str], body: bytes) -> Any:
    return journal_json(provider, since=_int_arg(args, "since", 0))


def _reset(provider: FakeProvider, args: dict[str, str], body: bytes) -> Any:
    provider.reset()
    return {"version": CONTROL_VERSION, "reset": True}


def _config(provider: FakeProvider, args: dict[str, str], body: bytes) -> Any:
    return config_json(provider)


def _verdict(provider: FakeProvider, args: dict[str, str], body: bytes) -> Any:
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


ROUTES: dict[str, dict[str, Handler]] = {
    "": {"GET": lambda p, a, b: _index(p)},
    "/journal": {"GET": _journal},
    "/reset": {"POST": _reset},
    "/config": {"GET": _config},
    "/verdict": {"GET": _verdict},
}


def control_reply(provider: FakeProvider, method: str, path: str, query: str, body: bytes) -> Reply:
    """Answer one control plane request (``path`` under :data:`CONTROL_PREFIX`)."""
    sub = path[len(CONTROL_PREFIX) :].rstrip("/")
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
        result = handler(provider, _query(query), body)
    except ControlError as exc:
        return _error(exc)
    return _json_reply(200, result)
