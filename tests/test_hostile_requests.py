"""Requests built to hurt, straight into the middleware: JSON of every bad shape, a ``model`` of
megabytes, floods of headers, a body that never finishes, a flood of requests without a key.

Each gets a clean OpenAI-style error with the right status (never a 500), a bounded ledger row
(or none, for a request refused before authentication), and the router answers a normal request
afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from asgi_helpers import Result, call
from raw_http import RawRequest, RawUpstream, response

from waterfall_asgi import MemoryLedger, WaterfallMiddleware

pytestmark = pytest.mark.anyio

CLIENT_KEY = "client-key-123"
AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
ANSWER = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "Hi"}]}


async def good(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    writer.write(response(200, json.dumps(ANSWER).encode()))


@asynccontextmanager
async def router(
    **limits: Any,
) -> AsyncIterator[tuple[WaterfallMiddleware, MemoryLedger, RawUpstream]]:
    async with RawUpstream(good) as up:
        ledger = MemoryLedger()
        config = {
            "providers": {"p": {"base_url": up.url, "api_key": "sk-upstream"}},
            "chains": {"fast": ["p/m"]},
            "client_keys": [CLIENT_KEY],
            "upstream": {"client": "httpx"},
            "limits": limits,
            "ledger": {"path": ""},
        }
        app = WaterfallMiddleware(None, config, ledger=ledger)
        try:
            yield app, ledger, up
        finally:
            await app.shutdown()


async def post(
    app: WaterfallMiddleware,
    body: bytes | dict[str, Any],
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> Result:
    async with asyncio.timeout(30):  # a hang guard
        return await call(
            app, "POST", "/v1/chat/completions", body, {**AUTH, **(headers or {})}, **kwargs
        )


async def still_serves(app: WaterfallMiddleware) -> None:
    result = await post(app, CHAT)
    assert result.status == 200, result.body
    assert result.json() == ANSWER


def error_of(result: Result, status: int, code: str) -> dict[str, Any]:
    assert result.status == status, result.body
    assert result.headers["content-type"] == "application/json"
    error = result.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return dict(error)


# -- 4. bad JSON of any shape is a 400, never a 500 ----------------------------------------------

DEEP = 100_000
BAD_JSON = {
    "deep-array": b"[" * DEEP + b"]" * DEEP,
    "deep-object": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    "deep-in-messages": b'{"model": "fast", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "deeper-than-the-limit": b'{"model": "fast", "messages": [' + b"[" * 200 + b"]" * 200 + b"]}",
    "escaped-lone-surrogate": b'{"model": "fast", "messages": [{"role": "user", '
    b'"content": "\\ud800"}]}',
    "escaped-lone-low-surrogate": b'{"model": "fast", "messages": [{"role": "user", '
    b'"content": "a\\uDC00b"}]}',
    "raw-surrogate-bytes": b'{"model": "fast", "messages": [{"role": "user", '
    b'"content": "\xed\xa0\x80"}]}',
    "not-utf8": b'{"model": "fast", "messages": [{"content": "\xff"}]}',
    "nan": b'{"model": "fast", "messages": [], "temperature": NaN}',
    "infinity": b'{"model": "fast", "messages": [], "temperature": -Infinity}',
    "huge-float": b'{"model": "fast", "messages": [], "temperature": 1e999}',
    "huge-int": b'{"model": "fast", "messages": [], "max_tokens": 1' + b"0" * 5000 + b"}",
    "duplicate-model": b'{"model": "fast", "model": "other", "messages": []}',
    "duplicate-nested": b'{"model": "fast", "messages": [{"role": "user", "role": "system"}]}',
    "truncated": b'{"model": "fast", "messages": [',
    "trailing-garbage": b'{"model": "fast", "messages": []} x',
    "empty": b"",
}


@pytest.mark.parametrize("body", BAD_JSON.values(), ids=BAD_JSON.keys())
async def test_bad_json_is_a_400(body: bytes) -> None:
    async with router() as (app, ledger, up):
        result = await post(app, body)
        error = error_of(result, 400, "invalid_json")
        assert len(error["message"]) < 200
        (record,) = ledger.records.values()
        assert (record.status, record.http_status, record.error) == (
            "rejected",
            400,
            "invalid_json",
        )
        assert up.requests == []  # nothing reached the upstream
        await still_serves(app)


async def test_json_just_within_the_depth_limit_is_served() -> None:
    nested: Any = "hi"
    for _ in range(125):
        nested = [nested]
    async with router() as (app, _, up):
        result = await post(app, {**CHAT, "metadata": {"x": nested}})
        assert result.status == 200, result.body
        assert json.loads(up.requests[0].body)["metadata"] == {"x": nested}


async def test_an_escaped_surrogate_pair_is_fine() -> None:
    body = b'{"model": "fast", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    async with router() as (app, _, up):
        result = await post(app, body)
        assert result.status == 200, result.body
        assert json.loads(up.requests[0].body)["messages"][0]["content"] == "\U0001f600"


# -- 7. echoed fields are bounded; no ledger row per unauthenticated request ---------------------


async def test_a_huge_model_is_refused_and_never_echoed_whole() -> None:
    model = "m" * 4_000_000
    async with router() as (app, ledger, _):
        result = await post(app, {**CHAT, "model": model})
        error = error_of(result, 400, "invalid_value")
        assert error["param"] == "model"
        assert len(result.body) < 1000
        (record,) = ledger.records.values()
        assert len(json.dumps(record.to_dict())) < 2000
        await still_serves(app)


async def test_an_unknown_model_is_echoed_bounded() -> None:
    async with router(max_model_length=10_000) as (app, _ledger, _):
        result = await post(app, {**CHAT, "model": "x" * 9000})
        error = error_of(result, 404, "model_not_found")
        assert len(error["message"]) < 600


async def test_an_unknown_path_is_echoed_bounded() -> None:
    app = WaterfallMiddleware(
        None, {"providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}}, "ledger": {"path": ""}}
    )
    result = await call(app, "GET", "/" + "p" * 100_000)
    assert len(error_of(result, 404, "unknown_url")["message"]) < 300


async def test_requests_without_a_key_are_counted_not_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="waterfall_asgi")
    async with router() as (app, ledger, _):
        for key in ["", "Bearer wrong", "Basic x"] * 100:
            result = await call(app, "POST", "/v1/chat/completions", CHAT, {"authorization": key})
            error_of(result, 401, "invalid_api_key")
        assert len(ledger.records) == 0
        assert app.refused_unauthenticated == 300
        lines = [r for r in caplog.records if '"http_status": 401' in r.getMessage()]
        assert len(lines) == 300  # the per-request line still counts each of them
        await still_serves(app)
        assert len(ledger.records) == 1


# -- 8. forwarded headers are bounded in count and size ------------------------------------------


async def test_header_floods_are_not_forwarded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="waterfall_asgi")
    headers = {f"x-flood-{i}": "v" for i in range(10_000)}
    headers["x-huge"] = "h" * 1_000_000
    async with router() as (app, _, up):
        result = await post(app, CHAT, headers)
        assert result.status == 200
        sent = up.requests[0].headers
        assert len(sent) <= 64 + 10  # the forwarded ones, and those the client library sets
        assert not any(k.lower() == "x-huge" for k, _ in sent)
        assert sum(len(k) + len(v) for k, v in sent) < 64 * 1024
    assert "1 header(s) over 8192 bytes (x-huge)" in caplog.text
    assert "header(s) beyond the first 64" in caplog.text


async def test_hop_by_hop_headers_are_not_forwarded() -> None:
    headers = {"connection": "x-private", "x-private": "1", "keep-alive": "5", "te": "trailers"}
    async with router() as (app, _, up):
        await post(app, CHAT, headers)
        names = {k.lower() for k, _ in up.requests[0].headers}
    assert not names & {"x-private", "keep-alive", "te"}


# -- 3. a body that never finishes is a 408 ------------------------------------------------------


async def test_a_body_that_never_finishes_is_a_408() -> None:
    async with router(body_timeout=0.2) as (app, _ledger, up):
        stalled = await _stalled_body(app)
        error_of(stalled, 408, "request_timeout")
        assert up.requests == []
        await still_serves(app)


async def _stalled_body(app: WaterfallMiddleware, *, auth: bool = True) -> Result:
    """A request whose body's first part arrives and then nothing more, ever (the client
    neither sends nor leaves)."""
    never = asyncio.Event()
    parts = iter([{"type": "http.request", "body": b'{"model": ', "more_body": True}])
    result = Result()

    async def receive() -> dict[str, Any]:
        for message in parts:
            return message
        await never.wait()
        return {"type": "http.disconnect"}  # pragma: no cover - never set

    async def send(message: Any) -> None:
        result.messages.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "root_path": "",
        "headers": [(b"authorization", AUTH["authorization"].encode())] if auth else [],
    }
    async with asyncio.timeout(30):
        await app(scope, receive, send)
    return result


async def test_many_stalled_bodies_each_get_408_and_a_quick_one_is_served() -> None:
    async with router(body_timeout=0.3) as (app, ledger, _):
        stalled = []
        for _ in range(5):  # begun one after another: their deadlines are too
            stalled.append(asyncio.create_task(_stalled_body(app)))
            await asyncio.sleep(0.1)
        await still_serves(app)  # while they wait
        for result in await asyncio.gather(*stalled):
            error_of(result, 408, "request_timeout")
        statuses = sorted(r.http_status for r in ledger.records.values())
        assert statuses == [200] + [408] * 5


async def test_a_read_cancelled_from_elsewhere_stays_cancelled() -> None:
    async with router(body_timeout=30) as (app, _, _up):
        reading = asyncio.create_task(_stalled_body(app))
        for _ in range(100):  # until the read has begun (a bounded poll)
            if app._body_timer._reading:
                break
            await asyncio.sleep(0.01)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert not app._body_timer._reading


def test_the_body_timer_works_on_a_second_event_loop() -> None:
    app = WaterfallMiddleware(
        None,
        {
            "providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
            "limits": {"body_timeout": 0.1},
            "ledger": {"path": ""},
        },
    )

    async def once() -> None:
        try:
            error_of(await _stalled_body(app, auth=False), 408, "request_timeout")
        finally:
            await app.shutdown()

    asyncio.run(once())
    asyncio.run(once())
