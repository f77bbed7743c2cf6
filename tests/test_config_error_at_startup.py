"""A config the router cannot use is seen at startup, and the process does not pretend to be
healthy: mounted as the docs show (``app.add_middleware(WaterfallMiddleware, config=...)``,
which Starlette and FastAPI build lazily, inside the server's first lifespan call), a config
error or a missing key variable makes uvicorn's startup fail with the config's own message,
lifespan ``auto`` and ``on`` alike. Where the server speaks no lifespan, the router's routes and
its health path answer a clear 503 while the host app's own routes keep working."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from waterfall_asgi.config import ConfigError
from waterfall_asgi.middleware import WaterfallMiddleware
from waterfall_fakes import LoopbackServer

MISSING_ENV = "WATERFALL_TEST_KEY_NOBODY_SETS"
MISSING_KEY = {
    "providers": {"a": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": MISSING_ENV}},
    "chains": {"fast": ["a/fake-small"]},
}
UNKNOWN_PROVIDER = {
    "providers": {"a": {"base_url": "http://127.0.0.1:9/v1"}},
    "chains": {"fast": ["a/fake-small", "b/fake-small"]},
}
HOST_APP = """
    import json
    from fastapi import FastAPI
    from waterfall_asgi import WaterfallMiddleware

    app = FastAPI()

    @app.get("/orders")
    def orders() -> dict[str, int]:
        return {{"orders": 3}}

    app.add_middleware(WaterfallMiddleware, config=json.loads({config!r}))
"""


@pytest.mark.loopback
@pytest.mark.parametrize(
    ("lifespan", "config", "says"),
    [
        ("auto", MISSING_KEY, f"providers.a.api_key_env: environment variable {MISSING_ENV}"),
        ("on", MISSING_KEY, f"providers.a.api_key_env: environment variable {MISSING_ENV}"),
        ("auto", UNKNOWN_PROVIDER, "chains.fast.1: unknown provider 'b'"),
    ],
    ids=["auto-missing-key", "on-missing-key", "auto-unknown-provider"],
)
def test_uvicorn_refuses_to_start_and_says_why(
    tmp_path: Path, lifespan: str, config: dict[str, Any], says: str
) -> None:
    (tmp_path / "host.py").write_text(textwrap.dedent(HOST_APP.format(config=json.dumps(config))))
    env = {k: v for k, v in os.environ.items() if k != MISSING_ENV}
    command = [sys.executable, "-m", "uvicorn", "host:app", "--host", "127.0.0.1", "--port", "0"]
    process = subprocess.Popen(
        [*command, "--lifespan", lifespan],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    guard = threading.Timer(60, process.kill)  # a hang ends the process, and the test fails
    guard.start()
    try:
        assert process.stderr is not None
        for line in process.stderr:  # until it exits, or pretends to be healthy
            lines.append(line)
            if "Application startup complete" in line:
                break
        log = "".join(lines)
        assert "Application startup complete" not in log, log
        assert process.wait(timeout=30) == 3  # uvicorn's exit code for a failed startup
    finally:
        guard.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
    assert "appears unsupported" not in log
    assert "the router's config is invalid, so it cannot start" in log
    assert says in log
    assert "Traceback" not in log
    assert "Application startup failed. Exiting." in log


def host_app(config: dict[str, Any]) -> FastAPI:
    app = FastAPI()

    @app.get("/orders")
    def orders() -> dict[str, int]:
        return {"orders": 3}

    app.add_middleware(WaterfallMiddleware, config=config)
    return app


@pytest.mark.loopback
def test_without_lifespan_the_host_app_works_and_the_router_says_it_is_misconfigured(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(MISSING_ENV, raising=False)
    with (
        LoopbackServer(host_app(MISSING_KEY), lifespan="off") as server,
        httpx.Client(base_url=server.root) as client,
    ):
        assert client.get("/orders").json() == {"orders": 3}
        chat = client.post("/v1/chat/completions", json={"model": "fast", "messages": []})
        health = client.get("/health")
        models = client.get("/v1/models")
        assert client.get("/orders").status_code == 200
    for answer in (chat, health, models):
        assert answer.status_code == 503
        error = answer.json()["error"]
        assert error["code"] == "router_misconfigured"
        assert error["type"] == "server_error"
        assert "config is invalid" in error["message"]
        assert MISSING_ENV not in error["message"]  # the details go to the log, not to clients
    logged = [r.getMessage() for r in caplog.records if r.name == "waterfall_asgi"]
    assert len([m for m in logged if MISSING_ENV in m]) == 1  # once, not per request


def test_the_error_is_kept_and_raised_by_startup() -> None:
    mw = WaterfallMiddleware(None, UNKNOWN_PROVIDER)
    assert isinstance(mw.config_error, ConfigError)
    assert "chains.fast.1: unknown provider 'b'" in str(mw.config_error)
    with pytest.raises(ConfigError, match="unknown provider 'b'"):
        asyncio.run(mw.startup())


def test_a_prefix_given_with_the_broken_config_is_still_answered_under() -> None:
    mw = WaterfallMiddleware(None, {**UNKNOWN_PROVIDER, "prefix": "/llm"})
    transport = httpx.ASGITransport(app=mw)

    async def ask() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/llm/chat/completions", json={})

    answer = asyncio.run(ask())
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "router_misconfigured"
