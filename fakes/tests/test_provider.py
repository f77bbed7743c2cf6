"""The fake's endpoints, determinism, usage accounting, script and recording, seen through httpx."""

from __future__ import annotations

import base64
import json
import struct
from decimal import Decimal
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from waterfall_fakes import (
    DEFAULT_MODELS,
    WORDS,
    Chunking,
    Cut,
    FakeConfig,
    FakeModel,
    FakeProvider,
    FakeTransport,
    NoDone,
    Status,
    count_prompt_tokens,
)
from waterfall_fakes.catalog import dumps, reply_words

CHAT = "/v1/chat/completions"
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hello to the café ☕ please"},
]
PROMPT_TOKENS = 15  # (3 + 2) + (3 + 7)


def client(fake: FakeProvider) -> httpx.Client:
    return httpx.Client(transport=FakeTransport(fake), base_url="http://fake")


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "fake-small", "messages": MESSAGES, **extra}


def sse_data(body: bytes) -> list[str]:
    """The ``data:`` payloads of an LF-encoded event stream, in order."""
    out = []
    for block in body.decode().split("\n\n"):
        out += [line[len("data: ") :] for line in block.split("\n") if line.startswith("data: ")]
    return out


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert list(body) == ["error"]
    err: dict[str, Any] = body["error"]
    return err


# -- simple endpoints ------------------------------------------------------------------------------


def test_health() -> None:
    r = client(FakeProvider(name="alpha")).get("/health")
    assert r.status_code == 200
    assert r.content == b'{"status":"ok","name":"alpha"}'
    assert r.headers["content-type"] == "application/json"
    assert r.headers["content-length"] == str(len(r.content))
    assert r.headers["x-fake-name"] == "alpha"


def test_models_publish_both_price_styles_exactly() -> None:
    r = client(FakeProvider()).get("/v1/models")
    assert r.status_code == 200
    body = json.loads(r.content, parse_float=Decimal)
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["fake-small", "fake-medium", "fake-large"]
    small = body["data"][0]
    assert small == {
        "id": "fake-small",
        "object": "model",
        "created": 1_700_000_000,
        "owned_by": "waterfall-fakes",
        "context_length": 8_192,
        "pricing": {"prompt": "0.00000015", "completion": "0.0000006", "request": "0"},
        "sats_pricing": {
            "prompt": Decimal("0.00015"),
            "completion": Decimal("0.0006"),
            "request": 0,
        },
    }
    assert isinstance(small["sats_pricing"]["prompt"], Decimal)
    assert b'"sats_pricing":{"prompt":0.00015,"completion":0.0006,"request":0}' in r.content
    for entry, model in zip(body["data"], DEFAULT_MODELS, strict=True):
        assert Decimal(entry["pricing"]["prompt"]) == model.usd_prompt
        assert Decimal(entry["pricing"]["completion"]) == model.usd_completion
        assert Decimal(entry["pricing"]["request"]) == model.usd_request
        assert entry["sats_pricing"]["prompt"] == model.sats_prompt
        assert entry["sats_pricing"]["completion"] == model.sats_completion
        assert entry["sats_pricing"]["request"] == model.sats_request
    assert body["data"][2]["pricing"]["request"] == "0.0001"
    assert body["data"][2]["sats_pricing"]["request"] == 2


def test_models_decimal_round_trip_keeps_digits_a_float_would_lose() -> None:
    fine = Decimal("0.000000123456789012345678901234")
    assert Decimal(float(fine)) != fine
    model = FakeModel(id="precise", usd_prompt=fine, sats_prompt=Decimal("1E-12"))
    fake = FakeProvider(models=[model], created=5)
    r = client(fake).get("/v1/models")
    entry = json.loads(r.content, parse_float=Decimal)["data"][0]
    assert entry["created"] == 5
    assert entry["pricing"]["prompt"] == "0.000000123456789012345678901234"
    assert Decimal(entry["pricing"]["prompt"]) == fine
    assert entry["sats_pricing"]["prompt"] == Decimal("0.000000000001")
    assert b'"prompt":0.000000000001,' in r.content


def test_dumps_writes_decimals_as_bare_numbers_and_utf8() -> None:
    assert dumps({"a": [Decimal("1.50"), Decimal("0")], "b": "café"}) == (
        '{"a":[1.50,0],"b":"café"}'.encode()
    )


def test_unknown_path_is_404() -> None:
    r = client(FakeProvider()).get("/v1/nope")
    assert r.status_code == 404
    assert error_of(r) == {
        "message": "Unknown path /v1/nope.",
        "type": "invalid_request_error",
        "param": None,
        "code": "unknown_url",
    }


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", CHAT, "POST"),
        ("PUT", "/v1/embeddings", "POST"),
        ("POST", "/health", "GET"),
        ("DELETE", "/v1/models", "GET"),
    ],
)
def test_wrong_method_is_405_with_allow(method: str, path: str, allow: str) -> None:
    fake = FakeProvider()
    r = client(fake).request(method, path)
    assert r.status_code == 405
    assert r.headers["allow"] == allow
    assert error_of(r) == {
        "message": f"Method {method} not allowed on {path}.",
        "type": "invalid_request_error",
        "param": None,
        "code": "method_not_allowed",
    }
    assert fake.requests[0].status == 405


@pytest.mark.parametrize(
    ("content", "message", "code", "param"),
    [
        (b"{not json", "We could not parse the JSON body of your request.", "invalid_json", None),
        (b"", "We could not parse the JSON body of your request.", "invalid_json", None),
        (b"[1, 2]", "The request body must be a JSON object.", "invalid_json", None),
        (
            b'{"messages": []}',
            "Missing required parameter: 'model'.",
            "missing_required_parameter",
            "model",
        ),
        (
            b'{"model": "fake-small"}',
            "Missing required parameter: 'messages'.",
            "missing_required_parameter",
            "messages",
        ),
        (
            b'{"model": "fake-small", "messages": "hi"}',
            "messages must be an array.",
            "invalid_type",
            "messages",
        ),
        (
            b'{"model": "fake-small", "messages": [], "n": 0}',
            "n must be an integer from 1 to 8.",
            "invalid_value",
            "n",
        ),
        (
            b'{"model": "fake-small", "messages": [], "n": 9}',
            "n must be an integer from 1 to 8.",
            "invalid_value",
            "n",
        ),
        (
            b'{"model": "fake-small", "messages": [], "n": true}',
            "n must be an integer from 1 to 8.",
            "invalid_value",
            "n",
        ),
    ],
)
def test_bad_chat_requests_are_400(
    content: bytes, message: str, code: str, param: str | None
) -> None:
    r = client(FakeProvider()).post(CHAT, content=content)
    assert r.status_code == 400
    assert error_of(r) == {
        "message": message,
        "type": "invalid_request_error",
        "param": param,
        "code": code,
    }


def test_bad_behaviour_header_is_400() -> None:
    fake = FakeProvider()
    r = client(fake).post(CHAT, json=chat(), headers={"x-fake-behaviour": "no_such_thing"})
    assert r.status_code == 400
    err = error_of(r)
    assert err["type"] == "invalid_request_error"
    assert err["code"] == "invalid_fake_behaviour"
    assert err["message"].startswith("Bad x-fake-behaviour header: 'no_such_thing': ")
    assert fake.requests[0].status == 400
    assert fake.requests[0].behaviours == ()


def test_unknown_model_is_404() -> None:
    r = client(FakeProvider()).post(CHAT, json=chat(model="gpt-nope"))
    assert r.status_code == 404
    assert error_of(r) == {
        "message": "The model `gpt-nope` does not exist.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }


@pytest.mark.parametrize("auth", [None, "Bearer wrong", "sk-right", "bearer sk-right"])
def test_wrong_api_key_is_401(auth: str | None) -> None:
    fake = FakeProvider(api_key="sk-right")
    headers = {} if auth is None else {"authorization": auth}
    r = client(fake).post(CHAT, json=chat(), headers=headers)
    assert r.status_code == 401
    assert error_of(r) == {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }


def test_right_api_key_is_accepted_and_not_in_repr() -> None:
    fake = FakeProvider(api_key="sk-right")
    r = client(fake).post(CHAT, json=chat(), headers={"authorization": "Bearer sk-right"})
    assert r.status_code == 200
    assert "sk-right" not in repr(fake.config)


# -- chat completions ------------------------------------------------------------------------------


def test_completion_shape_and_exact_usage() -> None:
    fake = FakeProvider()
    r = client(fake).post(CHAT, json=chat())
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["content-length"] == str(len(r.content))
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert len(body["id"]) == len("chatcmpl-") + 24
    assert r.headers["x-request-id"] == "req_" + body["id"][len("chatcmpl-") :]
    assert body["created"] == 1_700_000_000
    assert body["model"] == "fake-small"
    assert body["system_fingerprint"] == "fp_waterfall_fake"
    [choice] = body["choices"]
    words = reply_words(0, 0, 0, r.request.content, 12)
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": " ".join(words), "refusal": None},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert set(words) <= set(WORDS)
    assert count_prompt_tokens(MESSAGES) == PROMPT_TOKENS
    assert body["usage"] == {"prompt_tokens": 15, "completion_tokens": 12, "total_tokens": 27}


def test_content_is_multibyte_utf8() -> None:
    r = client(FakeProvider()).post(CHAT, json=chat())
    content = r.json()["choices"][0]["message"]["content"]
    assert any(len(ch.encode()) > 1 for ch in content)
    assert content.encode() in r.content  # sent as UTF-8, not \u-escaped


def test_prompt_token_count_rules() -> None:
    parts = [{"type": "text", "text": "two words"}, {"type": "image_url", "image_url": {}}]
    messages = [
        {"role": "user", "content": parts},
        {"role": "assistant", "content": None},
        "not a dict",
    ]
    assert count_prompt_tokens(messages) == 3 + 2 + 3 + 3
    assert count_prompt_tokens([]) == 0


@pytest.mark.parametrize(
    ("extra", "words", "finish"),
    [
        ({"max_tokens": 5}, 5, "length"),
        ({"max_tokens": 12}, 12, "stop"),
        ({"max_tokens": 100}, 12, "stop"),
        ({"max_tokens": 0}, 0, "length"),
        ({"max_completion_tokens": 3, "max_tokens": 100}, 3, "length"),
        ({"max_tokens": "7"}, 12, "stop"),
    ],
)
def test_max_tokens(extra: dict[str, Any], words: int, finish: str) -> None:
    r = client(FakeProvider()).post(CHAT, json=chat(**extra))
    body = r.json()
    content = body["choices"][0]["message"]["content"]
    assert (len(content.split(" ")) if content else 0) == words
    assert body["choices"][0]["finish_reason"] == finish
    assert body["usage"] == {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": words,
        "total_tokens": PROMPT_TOKENS + words,
    }


def test_reply_length_from_config() -> None:
    body = client(FakeProvider(reply_words=3)).post(CHAT, json=chat()).json()
    assert len(body["choices"][0]["message"]["content"].split(" ")) == 3
    assert body["usage"]["completion_tokens"] == 3


def test_n_choices() -> None:
    r = client(FakeProvider()).post(CHAT, json=chat(n=3, max_tokens=4))
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    contents = [c["message"]["content"] for c in body["choices"]]
    assert contents == [" ".join(reply_words(0, 0, c, r.request.content, 4)) for c in range(3)]
    assert len(set(contents)) == 3
    assert body["usage"] == {"prompt_tokens": 15, "completion_tokens": 12, "total_tokens": 27}


def test_same_seed_same_sequence_same_bytes() -> None:
    def run(seed: int) -> list[bytes]:
        c = client(FakeProvider(seed=seed))
        return [
            c.post(CHAT, json=chat()).content,
            c.post(CHAT, json=chat(stream=True)).content,
            c.post(CHAT, json=chat(model="fake-large", n=2)).content,
            c.post("/v1/embeddings", json={"model": "fake-small", "input": "x y"}).content,
        ]

    first, again, other = run(7), run(7), run(8)
    assert first == again
    assert first[0] != other[0]
    assert first[1] != other[1]
    assert first[3] != other[3]


def test_content_depends_on_request_number_and_body() -> None:
    c = client(FakeProvider())
    one, two = (c.post(CHAT, json=chat()).json() for _ in range(2))
    assert one["choices"][0]["message"]["content"] != two["choices"][0]["message"]["content"]
    assert one["id"] != two["id"]


def test_stream_with_include_usage() -> None:
    r = client(FakeProvider()).post(
        CHAT, json=chat(stream=True, max_tokens=4, stream_options={"include_usage": True})
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    assert "content-length" not in r.headers
    data = sse_data(r.content)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert len(chunks) == 1 + 4 + 1 + 1
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        assert c["model"] == "fake-small"
    for c in chunks[:-1]:
        assert "usage" in c
        assert c["usage"] is None
    assert chunks[0]["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": "", "refusal": None},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    words = reply_words(0, 0, 0, r.request.content, 4)
    deltas = [c["choices"][0]["delta"]["content"] for c in chunks[1:5]]
    assert deltas == [words[0], *(" " + w for w in words[1:])]
    assert chunks[5]["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    ]
    assert chunks[6]["choices"] == []
    assert chunks[6]["usage"] == {"prompt_tokens": 15, "completion_tokens": 4, "total_tokens": 19}


@pytest.mark.parametrize("options", [None, {}, {"include_usage": False}])
def test_stream_without_include_usage_has_no_usage_key(options: Any) -> None:
    extra = {} if options is None else {"stream_options": options}
    r = client(FakeProvider()).post(CHAT, json=chat(stream=True, **extra))
    data = sse_data(r.content)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert len(chunks) == 1 + 12 + 1
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_stream_n_choices_with_usage() -> None:
    r = client(FakeProvider()).post(
        CHAT, json=chat(stream=True, n=2, max_tokens=2, stream_options={"include_usage": True})
    )
    chunks = [json.loads(d) for d in sse_data(r.content)[:-1]]
    indexes = [c["choices"][0]["index"] if c["choices"] else None for c in chunks]
    assert indexes == [0, 1, 0, 1, 0, 1, 0, 1, None]
    text: dict[int, str] = {0: "", 1: ""}
    for c in chunks[2:6]:
        text[c["choices"][0]["index"]] += c["choices"][0]["delta"]["content"]
    assert text == {i: " ".join(reply_words(0, 0, i, r.request.content, 2)) for i in range(2)}
    assert chunks[-1]["usage"] == {"prompt_tokens": 15, "completion_tokens": 4, "total_tokens": 19}


def test_stream_content_equals_what_a_twin_answers_without_streaming() -> None:
    """The words depend on the seed, request number and body, so the same body with
    ``stream`` set differs; but the joined deltas are exactly ``reply_words``."""
    r = client(FakeProvider(seed=3)).post(CHAT, json=chat(stream=True))
    chunks = [json.loads(d) for d in sse_data(r.content)[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == " ".join(reply_words(3, 0, 0, r.request.content, 12))


# -- embeddings ------------------------------------------------------------------------------------


def test_embeddings() -> None:
    c = client(FakeProvider())
    r = c.post("/v1/embeddings", json={"model": "fake-medium", "input": ["a b c", "d"]})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert body["model"] == "fake-medium"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in body["data"])
    assert [len(d["embedding"]) for d in body["data"]] == [16, 16]
    assert all(-1 <= v <= 1 for d in body["data"] for v in d["embedding"])
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    single = c.post("/v1/embeddings", json={"model": "fake-small", "input": "d"}).json()
    assert single["data"][0]["embedding"] == body["data"][1]["embedding"]
    assert single["usage"] == {"prompt_tokens": 1, "total_tokens": 1}
    packed = c.post(
        "/v1/embeddings", json={"model": "fake-small", "input": "d", "encoding_format": "base64"}
    ).json()
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert list(struct.unpack("<16f", raw)) == body["data"][1]["embedding"]


def test_embeddings_errors() -> None:
    c = client(FakeProvider())
    r = c.post("/v1/embeddings", json={"model": "fake-small"})
    assert r.status_code == 400
    assert error_of(r)["code"] == "missing_required_parameter"
    assert error_of(r)["param"] == "input"
    r = c.post("/v1/embeddings", json={"model": "nope", "input": "x"})
    assert r.status_code == 404
    assert error_of(r)["code"] == "model_not_found"


# -- script, recording, reset ----------------------------------------------------------------------


def statuses(fake: FakeProvider, count: int) -> list[int]:
    c = client(fake)
    return [c.post(CHAT, json=chat()).status_code for _ in range(count)]


def test_script_is_consumed_in_order_then_normal() -> None:
    fake = FakeProvider(script=["status:code=503", "rate_limit", "ok", "insufficient_balance"])
    assert statuses(fake, 6) == [503, 429, 200, 402, 200, 200]


def test_script_cycles() -> None:
    fake = FakeProvider(script=["status:code=502", "ok"], cycle=True)
    assert statuses(fake, 5) == [502, 200, 502, 200, 502]


def test_script_steps_only_for_chat_and_embeddings() -> None:
    fake = FakeProvider(script=["status:code=500", "status:code=501"])
    c = client(fake)
    assert c.get("/health").status_code == 200
    assert c.get("/v1/models").status_code == 200
    assert c.get("/v1/nope").status_code == 404
    assert c.post("/v1/embeddings", json={"model": "fake-small", "input": "x"}).status_code == 500
    assert c.post(CHAT, json=chat()).status_code == 501
    assert c.post(CHAT, json=chat()).status_code == 200


def test_header_behaviours_are_added_to_the_script_step() -> None:
    fake = FakeProvider(script=[["no_done", "chunking:size=5"]])
    with pytest.raises(httpx.RemoteProtocolError):
        client(fake).post(CHAT, json=chat(stream=True), headers={"x-fake-behavior": "cut:bytes=12"})
    assert fake.requests[0].behaviours == (NoDone(), Chunking(size=5), Cut(bytes=12))


def test_script_steps_in_every_form() -> None:
    config = FakeConfig.model_validate(
        {
            "script": [
                "status:code=503",
                [Status(code=502), {"kind": "chunking", "size": 3}],
                Status(code=504),
                {"kind": "status", "code": 500},
                [],
            ]
        }
    )
    assert config.script == (
        (Status(code=503),),
        (Status(code=502), Chunking(size=3)),
        (Status(code=504),),
        (Status(code=500),),
        (),
    )
    assert statuses(FakeProvider(config), 6) == [503, 502, 504, 500, 200, 200]


def test_bad_script_step_names_the_problem() -> None:
    with pytest.raises(ValidationError, match="bogus"):
        FakeConfig.model_validate({"script": ["status:bogus=1"]})
    with pytest.raises(ValidationError, match="extra"):
        FakeConfig(sedd=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="reply_words"):
        FakeProvider(reply_words=-1)


def test_overrides_are_validated_and_keep_the_rest_of_the_config() -> None:
    base = FakeConfig.model_validate({"name": "base", "seed": 1, "script": ["status:code=503"]})
    fake = FakeProvider(base, seed=9)
    assert fake.config.name == "base"
    assert fake.config.seed == 9
    assert fake.config.script == ((Status(code=503),),)
    assert FakeProvider(base).config is base
    assert repr(fake) == "FakeProvider(name='base', requests=0)"


def test_recorded_requests() -> None:
    fake = FakeProvider()
    c = client(fake)
    c.get("/health")
    c.post(CHAT + "/", json=chat(), headers={"X-Fake-Behaviour": "chunking:size=4", "X-Extra": "1"})
    c.post(CHAT, content=b"{oops")
    c.post("/v1/embeddings", json={"model": "fake-small", "input": "x"})
    assert [(r.method, r.path, r.status) for r in fake.requests] == [
        ("GET", "/health", 200),
        ("POST", CHAT, 200),
        ("POST", CHAT, 400),
        ("POST", "/v1/embeddings", 200),
    ]
    first, second, third, _ = fake.requests
    assert first.json is None
    assert first.body == b""
    assert second.json == chat()
    assert json.loads(second.body) == chat()
    assert second.headers["x-extra"] == "1"
    assert second.headers["x-fake-behaviour"] == "chunking:size=4"
    assert second.headers["host"] == "fake"
    assert second.behaviours == (Chunking(size=4),)
    assert third.json is None
    assert third.body == b"{oops"
    assert [r.status for r in fake.calls()] == [200, 400]
    assert [r.path for r in fake.calls("/v1/embeddings")] == ["/v1/embeddings"]


def test_handle_takes_a_mapping_or_pairs() -> None:
    fake = FakeProvider()
    one = fake.handle("get", "health", {"X-A": "1"}, b"")
    two = fake.handle("GET", "/health/", [("X-A", "2")], b"")
    assert one.status == two.status == 200
    assert one.body == two.body == b'{"status":"ok","name":"fake"}'
    assert one.chunks == (one.body,)
    assert one.delays == ()
    assert one.headers_delay == 0.0
    assert one.cut is False
    assert one.delay_before(5) == 0.0
    assert [(r.method, r.path, r.headers) for r in fake.requests] == [
        ("GET", "/health", {"x-a": "1"}),
        ("GET", "/health", {"x-a": "2"}),
    ]


def test_reset_forgets_requests_and_rewinds_the_script() -> None:
    fake = FakeProvider(script=["status:code=503"])
    c = client(fake)
    first = c.post(CHAT, json=chat(stream=False))
    assert first.status_code == 503
    assert c.post(CHAT, json=chat()).status_code == 200
    fake.reset()
    assert fake.requests == []
    again = c.post(CHAT, json=chat(stream=False))
    assert again.status_code == 503
    assert again.content == first.content
    ok_after_reset = c.post(CHAT, json=chat()).json()
    fresh = FakeProvider()
    c2 = client(fresh)
    c2.post(CHAT, json=chat(stream=False))
    assert c2.post(CHAT, json=chat()).json() == ok_after_reset  # same request number again


# -- legacy text completions -------------------------------------------------------------------


def test_text_completions_json_and_stream() -> None:
    c = client(FakeProvider(seed=3))
    body = {"model": "fake-small", "prompt": "say three words", "max_tokens": 5}
    r = c.post("/v1/completions", json=body)
    reply = r.json()
    assert (r.status_code, reply["object"]) == (200, "text_completion")
    assert reply["id"].startswith("cmpl-")
    (choice,) = reply["choices"]
    assert choice["finish_reason"] == "length"
    assert len(choice["text"].split(" ")) == 5
    assert reply["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    streamed = c.post(
        "/v1/completions",
        json={
            **body,
            "prompt": ["a b", "c"],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    events = [
        json.loads(line[6:])
        for line in streamed.text.split("\n")
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    assert streamed.text.endswith("data: [DONE]\n\n")
    assert {e["object"] for e in events} == {"text_completion"}
    text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
    assert len(text.split(" ")) == 5
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "length"
    assert events[-1] == {
        **events[-1],
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    }


@pytest.mark.parametrize("prompt", [None, 3, [1, 2], {"a": 1}])
def test_text_completions_need_a_text_prompt(prompt: Any) -> None:
    c = client(FakeProvider())
    body = {"model": "fake-small"} if prompt is None else {"model": "fake-small", "prompt": prompt}
    r = c.post("/v1/completions", json=body)
    assert r.status_code == 400
    assert error_of(r)["param"] == "prompt"
