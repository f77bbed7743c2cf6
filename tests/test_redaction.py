"""The redaction property: whatever an upstream puts in an error body or header, no configured
secret (a provider key, a provider's secret header, a client key) reaches the client, the log or
the ledger, byte for byte."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import string

import httpx
from asgi_helpers import call
from hypothesis import given, settings
from hypothesis import strategies as st

from waterfall_asgi import MemoryLedger, Redactor, WaterfallMiddleware

# (marked as keys are, so that a secret is never a word the router says itself, like "upstream")
SECRETS = st.builds(
    "{}-{}".format,
    st.sampled_from(["sk", "sk-or-v1", "key", "tok"]),
    st.text(string.ascii_letters + string.digits + "-_.", min_size=8, max_size=40),
)
FILLER = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
STATUSES = st.sampled_from([400, 401, 403, 404, 409, 413, 422, 429, 500, 502, 503])


@st.composite
def echoes(draw: st.DrawFn, secrets: list[str]) -> str:
    """Text that holds some of the secrets, anywhere, among arbitrary characters."""
    parts = draw(st.lists(st.one_of(FILLER, st.sampled_from(secrets)), min_size=1, max_size=6))
    return "".join(parts)


@st.composite
def upstream_errors(draw: st.DrawFn, secrets: list[str]) -> tuple[int, bytes, dict[str, str]]:
    """An upstream's error: status, body (JSON with echoes in any field, or raw text), headers
    with echoes."""
    status = draw(STATUSES)
    kind = draw(st.sampled_from(["json", "text", "sse-error", "sse-late-error"]))
    if kind == "json":
        error = {
            key: draw(echoes(secrets))
            for key in draw(st.sets(st.sampled_from(["message", "code", "type", "param"])))
        }
        body = json.dumps({"error": error}, ensure_ascii=draw(st.booleans())).encode()
    elif kind == "text":
        body = draw(echoes(secrets)).encode()
    else:  # a 200 stream with an error event: its first, or after one of content
        status = 200
        error = {"message": draw(echoes(secrets)), "code": draw(echoes(secrets))}
        body = b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
        if kind == "sse-late-error":
            content = {"choices": [{"index": 0, "delta": {"content": "hi"}}]}
            body = b"data: " + json.dumps(content).encode() + b"\n\n" + body
    headers = {
        "content-type": ("text/event-stream" if kind.startswith("sse") else "application/json")
        + "; x="
        + draw(echoes(secrets)).encode("ascii", "ignore").decode(),
        "retry-after": draw(st.sampled_from(secrets)),
        "x-echo": draw(st.sampled_from(secrets)),
    }
    return status, body, headers


@settings(max_examples=150, deadline=None)
@given(
    key=SECRETS,
    header=SECRETS,
    client_key=SECRETS,
    data=st.data(),
    stream=st.booleans(),
)
def test_no_secret_reaches_the_client_the_log_or_the_ledger(
    key: str, header: str, client_key: str, data: st.DataObject, stream: bool
) -> None:
    secrets = [key, header, client_key, f"Bearer {key}"]
    status, body, headers = data.draw(upstream_errors(secrets))

    def upstream(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {key}"  # it was sent
        return httpx.Response(status, content=body, headers=headers)

    ledger = MemoryLedger()
    app = WaterfallMiddleware(
        None,
        {
            "providers": {
                "p": {
                    "base_url": "http://upstream.test/v1",
                    "api_key": key,
                    "headers": {"x-provider-secret": header},
                }
            },
            "chains": {"fast": ["p/m"]},
            "client_keys": [client_key],
            "ledger": {"path": ""},
        },
        transport=httpx.MockTransport(upstream),
        ledger=ledger,
    )
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    logger = logging.getLogger("waterfall_asgi")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)

    async def run() -> bytes:
        try:
            result = await call(
                app,
                "POST",
                "/v1/chat/completions",
                {
                    "model": "fast",
                    "messages": [{"role": "user", "content": "Hi"}],
                    "stream": stream,
                },
                {"authorization": f"Bearer {client_key}"},
            )
        finally:
            await app.shutdown()
        return result.body + json.dumps(result.headers).encode()

    try:
        seen = asyncio.run(run())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    rows = json.dumps([r.to_dict() for r in ledger.records.values()]).encode()
    for secret in secrets:
        raw = secret.encode()
        assert raw not in seen
        assert raw not in log.getvalue().encode()
        assert raw not in rows


@given(secrets=st.lists(SECRETS, min_size=1, max_size=4), data=st.data())
def test_the_redactor_leaves_no_secret_in_any_text(secrets: list[str], data: st.DataObject) -> None:
    text = data.draw(echoes(secrets))
    redactor = Redactor(secrets)
    for secret in secrets:
        assert secret not in redactor.text(text)
        assert secret.encode() not in redactor.bytes(text.encode())
