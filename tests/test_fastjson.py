"""The JSON of the request path: json's own results and errors, whatever the input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from waterfall_asgi._fastjson import decode, encoder

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)
)


_JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def _loads(data: str | bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        return type(exc)


@example(value={"a": 1}, before="", after="", encoding="utf-16-le", spaces=False)
@example(value={}, before="", after="}", encoding="utf-8", spaces=False)
@given(
    value=st.dictionaries(st.text(max_size=4), _JSON, max_size=3) | _JSON,  # objects, mostly
    before=st.sampled_from(["", " ", "\n", "\ufeff", "x"]),
    after=st.sampled_from(["", " ", "\r\n", "}", " 1"]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16-le", "utf-16-be", "utf-32", None]),
    spaces=st.booleans(),
)
def test_the_fast_json_decode_is_json_loads(
    value: Any, before: str, after: str, encoding: str | None, spaces: bool
) -> None:
    # request bodies, event data and response bodies are decoded without json.loads's own
    # scans when they plainly allow; whatever they hold, the result (or error) is the same
    text = before + json.dumps(value, separators=(", ", ": ") if spaces else (",", ":")) + after
    data: str | bytes = text if encoding is None else text.encode(encoding, "surrogatepass")
    try:
        got: Any = decode(data)
    except ValueError as exc:
        got = type(exc)
    assert got == _loads(data)


@given(
    value=_JSON,
    ensure_ascii=st.booleans(),
    compact=st.booleans(),
    sort_keys=st.booleans(),
    allow_nan=st.booleans(),
)
def test_the_encoder_is_json_encoders(
    value: Any, ensure_ascii: bool, compact: bool, sort_keys: bool, allow_nan: bool
) -> None:
    value = [value, float("inf")]  # (refused without allow_nan)
    options: dict[str, Any] = {
        "ensure_ascii": ensure_ascii,
        "separators": (",", ":") if compact else (", ", ": "),
        "sort_keys": sort_keys,
        "allow_nan": allow_nan,
    }
    expected: Any
    try:
        expected = json.JSONEncoder(**options).encode(value)
    except ValueError as exc:
        expected = str(exc)
    try:
        got: Any = encoder(**options)(value)
    except ValueError as exc:
        got = str(exc)
    assert got == expected


def test_the_encoder_calls_default_and_refuses_a_circular_value_as_json_does() -> None:
    assert encoder(default=str)({"at": 1j}) == '{"at": "1j"}'
    circular: list[Any] = [1]
    circular.append(circular)
    for encode in (encoder(), json.JSONEncoder().encode):
        with pytest.raises(ValueError, match=r"^Circular reference detected$"):
            encode(circular)
    assert encoder(indent=2)([1]) == "[\n  1\n]"  # (indents: JSONEncoder's own)
