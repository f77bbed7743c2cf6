"""benchmarks/instructions.py measures what it says: each proxy answers the bench's request
correctly in its harness, and the command runs (CPU mode; valgrind is not needed here)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sqlite3
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def instructions() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("instructions", BENCH / "instructions.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def body_of(sent: list[dict[str, object]]) -> bytes:
    return b"".join(m["body"] for m in sent if m["type"] == "http.response.body")  # type: ignore[misc]


@pytest.mark.parametrize("proxy", ["passthrough", "router", "router+sqlite"])
@pytest.mark.parametrize("workload", ["json", "stream", "stream-responses", "stream-messages"])
def test_each_proxy_answers_the_bench_request(
    instructions: ModuleType, proxy: str, workload: str, tmp_path: Path
) -> None:
    content_type, upstream_body = instructions.bodies()[workload]

    async def go() -> list[dict[str, object]]:
        app = instructions.make_app(proxy, str(tmp_path))
        inbox: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        outbox: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        await inbox.put({"type": "lifespan.startup"})
        lifespan = asyncio.ensure_future(app({"type": "lifespan"}, inbox.get, outbox.put))
        assert (await outbox.get())["type"] == "lifespan.startup.complete"
        body = instructions.run.request_body(workload)
        sent = await instructions.request(app, body, workload)
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await lifespan
        return sent

    sent = asyncio.run(go())
    start = sent[0]
    assert start["status"] == 200
    assert dict(start["headers"])[b"content-type"] == content_type.encode()  # type: ignore[call-overload]
    body = body_of(sent)
    if proxy == "passthrough" or workload != "stream":
        # the whole answer, as the upstream sent it (the Responses API and Anthropic always
        # report usage: the router asks for nothing, and cuts nothing)
        assert body == upstream_body
    else:  # the router cut the usage-only chunk it asked for, and the rest is unchanged
        events = [e + b"\n\n" for e in upstream_body.split(b"\n\n") if e]
        usage_only = [e for e in events if b'"choices":[]' in e]
        assert len(usage_only) == 1
        assert json.loads(usage_only[0].removeprefix(b"data: "))["usage"]["total_tokens"] > 0
        assert body == b"".join(e for e in events if e not in usage_only)
    if proxy == "router+sqlite":  # the usage the answer reported, in every dialect
        rows = sqlite3.connect(tmp_path / "usage.db").execute(
            "SELECT status, completion_tokens FROM usage"
        )
        assert rows.fetchall() == [("success", instructions.run.CONTENT_EVENTS)]


def test_the_cpu_mode_prints_a_line_per_proxy_and_workload(
    instructions: ModuleType, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(instructions, "WARM_UP", 4)
    # (router+otel is left out: it sets the process-wide OpenTelemetry providers, once for good)
    proxies = ["passthrough", "router", "router+sqlite", "router+metrics"]
    assert instructions.main(["--cpu", "--requests", "8", "--concurrency", "4", *proxies]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "per request, in process, concurrency 4: µs CPU"
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1]) for r in rows] == [(w, p) for w in ("json", "stream") for p in proxies]
    assert all(float(r[2]) > 0 for r in rows)
    assert [r[3] for r in rows if r[1] == "passthrough"] == ["1.00×", "1.00×"]


def test_the_cpu_mode_measures_the_stream_of_each_dialect(
    instructions: ModuleType, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(instructions, "WARM_UP", 4)
    args = ["--cpu", "--requests", "8", "--concurrency", "4", "--workload", "streams"]
    assert instructions.main([*args, "passthrough", "router"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    streams = ("stream", "stream-responses", "stream-messages")
    assert [(r[0], r[1]) for r in rows] == [
        (w, p) for w in streams for p in ("passthrough", "router")
    ]
    assert all(float(r[2]) > 0 for r in rows)


def test_without_valgrind_it_says_so(
    instructions: ModuleType, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(instructions.shutil, "which", lambda name: None)
    assert instructions.main([]) == 2
    assert "valgrind is not installed" in capsys.readouterr().err


@pytest.mark.parametrize("workload", ["json", "stream-responses", "stream-messages"])
def test_the_router_in_the_bench_checks_the_client_key(
    instructions: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workload: str
) -> None:
    """Auth is on in the bench, as the performance targets ask, in each dialect's way (Anthropic's
    clients send ``x-api-key``): a wrong key gets a 401."""

    async def go() -> list[dict[str, object]]:
        app = instructions.make_app("router", str(tmp_path))
        monkeypatch.setattr(instructions.run, "CLIENT_KEY", "sk-not-the-key")
        body = instructions.run.request_body(workload)
        return await instructions.request(app, body, workload)

    assert asyncio.run(go())[0]["status"] == 401
