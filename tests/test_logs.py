"""``serve --log-format json``: every line one JSON object, the per-request line's documented
fields at its top level, no secret in any line; the text format keeps a JSON message; a mounted
router's request line carries its fields for the host's own formatter."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import httpx
import pytest
from asgi_helpers import call
from serve_process import serve

from waterfall_asgi import REQUEST_FIELDS, JsonFormatter, MemoryLedger, WaterfallMiddleware
from waterfall_fakes import FakeNetwork, FakeProvider, FakeServer

UPSTREAM_KEY = "sk-upstream-very-secret"
CLIENT_KEY = "ck-client-very-secret"


def _config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "router.toml"
    config.write_text(
        f'client_keys = ["{CLIENT_KEY}"]\n[providers.up]\nbase_url = "{url}"\n'
        f'api_key = "{UPSTREAM_KEY}"\n\n[chains]\nfast = ["up/fake-small"]\n\n'
        '[ledger]\npath = ""\n\n[metrics]\nenabled = true\npath = "/metrics"\n',
        encoding="utf-8",
    )
    return config


def _traffic(port: int) -> None:
    auth = {"authorization": f"Bearer {CLIENT_KEY}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "fast", "messages": [{"role": "user", "content": "Hi"}]},
            headers=auth,
        )
        assert chat.status_code == 200
        assert client.get("/metrics").status_code == 401
        metrics = client.get("/metrics", headers=auth)
        assert metrics.status_code == 200
        assert 'waterfall_requests_total{chain="fast",code="200"' in metrics.text


@pytest.mark.loopback
def test_json_lines_over_a_real_server(tmp_path: Path) -> None:
    upstream = FakeProvider(name="up", api_key=UPSTREAM_KEY)
    with FakeServer(upstream) as fake:
        config = _config(tmp_path, fake.url)
        with serve(config, "--log-format", "json") as serving:
            _traffic(serving.port)
            assert serving.terminate(timeout=15) == 0
    lines = [json.loads(line) for line in serving.stderr + serving.stdout[1:] if line.strip()]
    assert all({"time", "level", "logger"} <= set(line) for line in lines)
    (request,) = [line for line in lines if line.get("event") == "request"]
    assert request["logger"] == "waterfall_asgi"
    assert list(request)[4:] == list(REQUEST_FIELDS)
    assert (request["status"], request["http_status"], request["provider"]) == (
        "success",
        200,
        "up",
    )
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert any("POST /v1/chat/completions" in line["message"] for line in access)
    everything = "\n".join(serving.stderr + serving.stdout)
    assert UPSTREAM_KEY not in everything
    assert CLIENT_KEY not in everything


@pytest.mark.loopback
def test_the_text_format_keeps_a_json_message(tmp_path: Path) -> None:
    upstream = FakeProvider(name="up", api_key=UPSTREAM_KEY)
    with FakeServer(upstream) as fake:
        config = _config(tmp_path, fake.url)
        with serve(config, "--log-level", "info") as serving:
            _traffic(serving.port)
            assert serving.terminate(timeout=15) == 0
    (line,) = [x for x in serving.stderr if '"route": "/v1/chat/completions"' in x]
    prefix, _, message = line.partition("{")
    assert prefix.startswith("INFO:")
    assert list(json.loads("{" + message)) == list(REQUEST_FIELDS)
    everything = "\n".join(serving.stderr + serving.stdout)
    assert UPSTREAM_KEY not in everything
    assert CLIENT_KEY not in everything


@pytest.mark.anyio
async def test_a_mounted_router_hands_its_fields_to_the_hosts_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    net = FakeNetwork({"a": FakeProvider(name="a")})
    config = {"providers": {"a": {"base_url": "http://a/v1"}}, "chains": {"f": ["a/fake-small"]}}
    app = WaterfallMiddleware(None, config, transport=net, ledger=MemoryLedger())
    body = {"model": "f", "messages": [{"role": "user", "content": "hello"}]}
    try:
        with caplog.at_level(logging.INFO, logger="waterfall_asgi"):
            await call(app, "POST", "/v1/chat/completions", body)
    finally:
        await app.shutdown()
    (record,) = [r for r in caplog.records if hasattr(r, "waterfall_request")]
    fields = record.waterfall_request
    assert list(fields) == list(REQUEST_FIELDS)
    assert json.loads(record.getMessage()) == fields
    line = json.loads(JsonFormatter().format(record))
    assert line["event"] == "request"
    assert line["id"] == fields["id"]


def test_the_json_formatter_keeps_an_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "", 0, "failed", (), sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "error"
    assert line["message"] == "failed"
    assert "ValueError: boom" in line["exception"]
