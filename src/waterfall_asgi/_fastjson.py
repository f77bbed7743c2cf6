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
from collections.abc import Callable
from typing import Any

__all__ = ["decode", "encoder"]

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
