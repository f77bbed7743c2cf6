"""A config's mistakes in plain words, all of them at once.

pydantic stops before a model's own checks when a field is wrong, and speaks of its types
("Input should be a valid tuple"). :func:`plain_errors` rewrites each error for someone editing a
TOML, YAML or JSON file ("should be a list, not text"), adds "did you mean" for an unknown key or
a value that is almost a known one, and adds the reference problems (an unknown provider, an
unknown default chain) that pydantic never got to, read from the raw data, so that one run
reports every mistake. It never quotes a value the user gave (it may be a secret): only its kind,
and the names of keys, providers and chains.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ValidationError

__all__ = ["did_you_mean", "plain_errors", "reference_problems"]

_LISTS = {"tuple_type", "list_type", "set_type", "frozen_set_type", "iterable_type"}
_TABLES = {"dict_type", "model_type", "model_attributes_type", "dataclass_type", "mapping_type"}
_SHOULD = {
    "string_type": "should be text (a string)",
    "int_type": "should be a whole number",
    "int_parsing": "should be a whole number",
    "int_from_float": "should be a whole number",
    "float_type": "should be a number",
    "float_parsing": "should be a number",
    "decimal_type": "should be a number",
    "decimal_parsing": "should be a number",
    "bool_type": "should be true or false",
    "bool_parsing": "should be true or false",
}


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the known name closest to ``name``, else ``""``.

    >>> did_you_mean("opneai", ["openai", "groq"])
    " (did you mean 'openai'?)"
    >>> did_you_mean("zzz", ["openai"])
    ''
    """
    close = difflib.get_close_matches(name, [k for k in known if isinstance(k, str)], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _kind(value: Any) -> str:
    """What a value is, in a config file's words (never the value itself)."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float | Decimal):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple | set | frozenset):
        return "a list"
    return f"a {type(value).__name__}"


def _model_at(root: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model whose fields the key at ``loc`` is among (``None``: not known)."""
    annotation: Any = root
    for part in loc:
        model = _as_model(annotation)
        if model is not None:
            field = model.model_fields.get(str(part))
            if field is None:
                return None
            annotation = field.annotation
            continue
        args = [a for a in typing.get_args(_strip_none(annotation)) if a is not Ellipsis]
        if not args:
            return None
        annotation = args[-1]  # dict[str, X] -> X; tuple[X, ...] -> X: the key is skipped
    return _as_model(annotation)


def _strip_none(annotation: Any) -> Any:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _as_model(annotation: Any) -> type[BaseModel] | None:
    annotation = _strip_none(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _plain(error: Mapping[str, Any], root: type[BaseModel]) -> str:
    """One pydantic error as a line: ``where: what``."""
    loc = tuple(error["loc"])
    kind = error["type"]
    given = error.get("input")
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "missing":
        message = "a required setting, not given"
    elif kind == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        known = list(model.model_fields) if model is not None else []
        message = "unknown setting" + did_you_mean(str(loc[-1]), known)
        if known and not message.endswith("?)"):
            message += f" (known here: {', '.join(known)})"
    elif kind in _LISTS:
        message = f"should be a list (in TOML: [...]), not {_kind(given)}"
    elif kind in _TABLES:
        message = f"should be a table of settings, not {_kind(given)}"
    elif kind in _SHOULD:
        message = f"{_SHOULD[kind]}, not {_kind(given)}"
    elif kind == "literal_error":
        expected = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
        message = "should be " + " or ".join(repr(e) for e in expected)
        if isinstance(given, str):
            message += did_you_mean(given, expected)
    elif message.startswith("Input should"):
        message = message.removeprefix("Input ")
    where = ".".join(str(p) for p in loc)
    return f"{where}: {message}" if where else message


def plain_errors(exc: ValidationError, data: Any, root: type[BaseModel]) -> list[str]:
    """Every problem of ``data`` as validated against ``root``: pydantic's errors in plain words,
    then the reference problems it did not get to (see :func:`reference_problems`), each once."""
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        line = _plain(error, root)
        lines += line.split("\n") if not error["loc"] else [line]
    if isinstance(data, Mapping):
        lines += reference_problems(data)
    return list(dict.fromkeys(lines))


def _provider_of(entry: Any) -> str | None:
    if isinstance(entry, str):
        provider, sep, model = entry.partition("/")
        return provider if sep and provider and model else None
    if isinstance(entry, Mapping) and isinstance(entry.get("provider"), str):
        return str(entry["provider"])
    return None


def reference_problems(data: Mapping[str, Any]) -> list[str]:
    """What in raw config ``data`` names a provider or chain that is not there, worded as
    :class:`~waterfall_asgi.config.RouterConfig`'s own check words it.

    >>> for line in reference_problems(
    ...     {"providers": {"openai": {}}, "chains": {"fast": ["opnai/m"]}, "default_chain": "fsat"}
    ... ):
    ...     print(line)
    chains.fast.0: unknown provider 'opnai' (did you mean 'openai'?)
    default_chain: no chain named 'fsat' (did you mean 'fast'?)
    """
    providers = data.get("providers")
    known = [str(k) for k in providers] if isinstance(providers, Mapping) else []
    problems: list[str] = []

    def check(where: str, entries: Any) -> None:
        if not isinstance(entries, list | tuple):
            return
        for i, entry in enumerate(entries):
            provider = _provider_of(entry)
            if provider is not None and isinstance(providers, Mapping) and provider not in known:
                problems.append(
                    f"{where}.{i}: unknown provider {provider!r}" + did_you_mean(provider, known)
                )

    chains = data.get("chains")
    chains = chains if isinstance(chains, Mapping) else {}
    for name, entries in chains.items():
        check(f"chains.{name}", entries)
    check("deployments", data.get("deployments"))
    routes = data.get("routes")
    if isinstance(routes, Mapping):
        for name, route in routes.items():
            if isinstance(route, Mapping):
                check(f"routes.{name}.deployments", route.get("deployments"))
    default = data.get("default_chain")
    if isinstance(default, str) and default not in chains:
        problems.append(
            f"default_chain: no chain named {default!r}" + did_you_mean(default, chains)
        )
    return problems
