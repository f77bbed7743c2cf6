"""JSON on the request path: :mod:`json`'s own C scanner and encoder, without the Python work
that :func:`json.loads` and :meth:`json.JSONEncoder.encode` do around them on every call.

``json.loads`` checks the encoding and scans for whitespace before and after the value;
``JSONEncoder.encode`` makes a new C encoder (and a closure) per call. Both cost more than the
decoding or encoding of a small object itself. The results, and the errors, are theirs.
"""

from __future__ import annotations

import json
import json.encoder
import json.scanner
import math
from collections.abc import Callable
from typing import Any

__all__ = ["decode", "decode_request", "encoder"]

# what json.loads runs (the C scanner when built); typeshed types its argument as a scanner
_SCAN = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def decode(data: str | bytes) -> Any:
    """``json.loads(data)``, without its encoding check and its two whitespace scans when
    ``data`` is one JSON value from its first character to its last (bytes: an object, in
    UTF-8). A request's body and an event's data always are, as clients and providers write
    them; anything else goes to ``json.loads``.

    >>> decode(b'{"a": [1, 2.5, null]}')
    {'a': [1, 2.5, None]}
    """
    if isinstance(data, bytes):
        if data[:1] != b"{" or data[1:2] == b"\0":  # (else UTF-16 or -32 may be): as it is
            return json.loads(data)
        data = data.decode("utf-8", "surrogatepass")  # as json.loads decodes such bytes
    try:
        obj, end = _SCAN(data, 0)
    except StopIteration:  # leading whitespace, or no JSON value: json.loads says which
        return json.loads(data)
    return obj if end == len(data) else json.loads(data)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key[:64]!r}")
            seen.add(key)
    return obj


def _finite(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError(f"number out of range ({text[:32]}...)")
    return value


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_STRICT_SCAN = json.scanner.make_scanner(
    json.JSONDecoder(  # type: ignore[arg-type]
        object_pairs_hook=_pairs, parse_float=_finite, parse_constant=_constant
    )
)
_STRICT_ENCODE = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode


def decode_request(body: bytes, max_depth: int) -> Any:
    """A client's JSON body, held to strict JSON: UTF-8, no duplicate keys, no ``NaN`` or
    ``Infinity``, no number too large for a float, no lone surrogate (raw or escaped), and
    nested at most ``max_depth`` deep. Raises ``ValueError`` saying which rule was broken.

    >>> decode_request(b'{"a": [1, {"b": 2.5}]}', 3)
    {'a': [1, {'b': 2.5}]}
    >>> for bad in (b'{"a": 1, "a": 2}', b'{"a": NaN}', b'{"a": 1e999}', b'{"a": "\\\\ud800"}',
    ...             b'{"a": [[[1]]]}', b'[' * 100_000):
    ...     try:
    ...         decode_request(bad, 3)
    ...     except ValueError as exc:
    ...         print(exc)
    duplicate key 'a'
    NaN is not JSON
    number out of range (1e999...)
    a lone surrogate in a string
    nested more than 3 deep
    nested too deep
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (at byte {exc.start})") from None
    try:
        obj = _strict_loads(text)
    except RecursionError:
        raise ValueError("nested too deep") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{exc.msg} at character {exc.pos}") from None
    if "\\u" in text and ("\\ud" in text or "\\uD" in text):  # escaped surrogates, maybe lone
        try:
            _STRICT_ENCODE(obj).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a lone surrogate in a string") from None
    if text.count("{") + text.count("[") > max_depth and _deeper(obj, max_depth):
        raise ValueError(f"nested more than {max_depth} deep")
    return obj


def _strict_loads(text: str) -> Any:
    try:
        obj, end = _STRICT_SCAN(text, 0)
    except StopIteration:  # leading whitespace, or no JSON value: json.loads says which
        end = -1
    if end != len(text):
        return json.loads(
            text, object_pairs_hook=_pairs, parse_float=_finite, parse_constant=_constant
        )
    return obj


def _deeper(obj: Any, limit: int) -> bool:
    """Whether ``obj`` nests containers more than ``limit`` deep (itself: depth 1)."""
    if not isinstance(obj, dict | list):
        return False
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def encoder(**options: Any) -> Callable[[Any], str]:
    """``json.JSONEncoder(**options).encode``, with its C encoder made once, here.

    The C encoder made here does not track the containers it is in, so a circular one is
    found by the recursion limit; it is then encoded again by ``JSONEncoder.encode``, which
    raises its own ``ValueError``.

    >>> encoder(separators=(",", ":"))({"a": [1, None, "é"]})
    '{"a":[1,null,"\\\\u00e9"]}'
    """
    reference = json.JSONEncoder(**options)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None or options.get("indent") is not None:  # (the pure-Python json, or indents)
        return reference.encode
    strings = (
        json.encoder.encode_basestring_ascii
        if reference.ensure_ascii
        else json.encoder.encode_basestring
    )
    parts = make(
        None,  # no markers: see above
        reference.default,
        strings,
        None,
        reference.key_separator,
        reference.item_separator,
        reference.sort_keys,
        reference.skipkeys,
        reference.allow_nan,
    )

    def encode(obj: Any) -> str:
        try:
            return "".join(parts(obj, 0))
        except RecursionError:  # circular, or too deep: JSONEncoder says which
            return reference.encode(obj)

    return encode
