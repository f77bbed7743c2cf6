"""``waterfall-asgi serve`` stops within its graceful-shutdown timeout with a long stream and a
slow body in flight, every ledger row terminal; and its log carries the router's documented
lines (the per-request JSON line, the ledger's "marked interrupted" line after a kill -9).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from raw_http import RawRequest, RawUpstream
from serve_process import Serving, serve

from waterfall_asgi import TERMINAL_STATUSES, read_records

pytestmark = [pytest.mark.loopback, pytest.mark.anyio]

MARKED = re.compile(r"1 record\(s\) .*a process that ended marked interrupted")
WAIT = 30.0  # the most any one wait may take (a hang guard, not a measure)
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "Hi"}], "stream": True}


async def endless_stream(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    """A stream that sends a chunk every 0.1 s and never ends."""
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    event = b'data: {"choices": [{"index": 0, "delta": {"content": "x"}}]}\n\n'
    while True:
        writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)


def write_config(folder: Path, url: str) -> Path:
    config = folder / "router.toml"
    config.write_text(
        f'[providers.up]\nbase_url = "{url}"\n\n[chains]\nfast = ["up/m"]\n\n'
        '[limits]\nbody_timeout = 120\n\n[ledger]\npath = "usage.db"\nlease = 0.5\n',
        encoding="utf-8",
    )
    return config


@asynccontextmanager
async def in_flight(serving: Serving) -> AsyncIterator[None]:
    """A stream that has begun, and a body that has begun: both still going."""
    port = serving.port
    body = json.dumps(CHAT).encode()
    s_reader, s_writer = await asyncio.open_connection("127.0.0.1", port)
    s_writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    async with asyncio.timeout(WAIT):
        assert (await s_reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        await s_reader.readuntil(b'"content": "x"')  # the stream is flowing
    _b_reader, b_writer = await asyncio.open_connection("127.0.0.1", port)
    b_writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 1000\r\n\r\n{"
    )
    await b_writer.drain()
    # once a later request is answered, the server has read the slow one's head too
    async with httpx.AsyncClient(timeout=WAIT) as client:
        assert (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200
    try:
        yield
    finally:
        s_writer.close()
        b_writer.close()


async def test_sigterm_with_a_stream_and_a_slow_body_in_flight(tmp_path: Path) -> None:
    async with RawUpstream(endless_stream) as up:
        config = write_config(tmp_path, up.url)
        with serve(config, "--timeout-graceful-shutdown", "1") as serving:
            async with in_flight(serving):
                serving.proc.send_signal(signal.SIGTERM)
                # within the graceful timeout, and the few seconds the rows take to be written
                returncode = await asyncio.to_thread(serving.proc.wait, 15)
    assert returncode == 0
    records = read_records(tmp_path / "usage.db")
    assert len(records) == 2, records
    assert {r.status for r in records} <= set(TERMINAL_STATUSES)
    assert sorted(r.status for r in records) == ["interrupted", "interrupted"]
    stream = next(r for r in records if r.stream)
    assert stream.http_status == 200
    # the per-request JSON line, one for each
    lines = [line for line in serving.stderr if '"route": "/v1/chat/completions"' in line]
    assert len(lines) == 2, "\n".join(serving.stderr)
    assert "Cancel 2 running task(s), timeout graceful shutdown exceeded" in "\n".join(
        serving.stderr
    )


def _pending(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            (count,) = conn.execute(
                "SELECT count(*) FROM usage WHERE status = 'pending'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError:  # no file, or no table, yet
        return 0
    return int(count)


async def pending_on_disk(db: Path) -> None:
    """Wait until the stream's pending row has been written (the ledger writes in the
    background): a bounded poll."""
    for _ in range(300):
        if _pending(db) == 1:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the pending row never reached the ledger")


async def test_rows_left_pending_by_a_kill_are_reported_at_the_next_start(
    tmp_path: Path,
) -> None:
    async with RawUpstream(endless_stream) as up:
        config = write_config(tmp_path, up.url)
        with serve(config) as serving:
            async with in_flight(serving):
                await pending_on_disk(tmp_path / "usage.db")
                serving.proc.kill()
                await asyncio.to_thread(serving.proc.wait, WAIT)
        assert _pending(tmp_path / "usage.db") == 1  # the stream (the body was never accepted)
        with serve(config) as again:
            # the dead process's lease lapses within 0.5 s: its row is then marked (a bounded
            # poll of the log)
            for _ in range(200):
                if any(MARKED.search(line) for line in again.stderr):
                    break
                await asyncio.sleep(0.05)
        text = "\n".join(again.stderr)  # all of it, once the process has ended
    assert len([line for line in again.stderr if MARKED.search(line)]) == 1, text
    assert read_records(tmp_path / "usage.db")[0].status == "interrupted"


def test_serve_log_level_sets_the_routers_logger(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text(
        '[providers.up]\nbase_url = "http://127.0.0.1:9/v1"\n\n[chains]\nfast = ["up/m"]\n'
        '[ledger]\npath = ""\n',
        encoding="utf-8",
    )
    for level, expected in [("info", 1), ("warning", 0)]:
        with serve(config, "--log-level", level) as serving:
            answer = httpx.post(
                f"http://127.0.0.1:{serving.port}/v1/chat/completions", json={}, timeout=WAIT
            )
            assert answer.status_code == 400
            serving.terminate(WAIT)
        lines = [line for line in serving.stderr if '"http_status": 400' in line]
        assert len(lines) == expected, serving.stderr
