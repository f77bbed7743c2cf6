"""Hostile clients against ``waterfall-asgi serve``, over raw sockets on loopback: slowloris
headers, slow bodies, floods of idle connections, header floods, deep JSON, lone surrogates, a
huge ``model``.

For each: the status, the error's shape, an answer (or a closed connection) within a bounded
wait (every wait has a timeout; nothing is timed), and a normal request still answered
afterwards. The server runs with short bounds (``--header-timeout 1``, ``body_timeout = 1``) so
the waits stay short.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_process import Serving, serve

from waterfall_fakes import FakeProvider, FakeServer

pytestmark = [pytest.mark.loopback, pytest.mark.anyio]

CHAT = {"model": "fast", "messages": [{"role": "user", "content": "Hi"}]}
WAIT = 30.0  # the most any one wait of these tests may take (a hang guard, not a measure)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    upstream = FakeProvider(name="up", reply_words=3)
    with FakeServer(upstream) as fake:
        config = tmp_path_factory.mktemp("hostile") / "router.toml"
        config.write_text(
            f'[providers.up]\nbase_url = "{fake.url}"\n\n[chains]\nfast = ["up/fake-small"]\n\n'
            "[limits]\nbody_timeout = 1\n",
            encoding="utf-8",
        )
        with serve(
            config,
            "--header-timeout",
            "1",
            "--max-header-bytes",
            "16384",
            "--timeout-keep-alive",
            "1",
            "--log-level",
            "warning",
        ) as serving:
            yield serving


async def still_serves(port: int) -> None:
    async with httpx.AsyncClient(timeout=WAIT) as client:
        answer = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    data = b""
    try:
        async with asyncio.timeout(WAIT):
            while chunk := await reader.read(65536):
                data += chunk
    except ConnectionResetError:  # the bytes before the reset are what counts
        pass
    return data


def parsed(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


def openai_error(raw: bytes, status: int, code: str) -> None:
    got, headers, body = parsed(raw)
    assert got == status, raw[:300]
    assert headers["content-type"] == "application/json"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code


async def drip(writer: asyncio.StreamWriter, byte: bytes, every: float) -> None:
    try:
        while True:
            await asyncio.sleep(every)
            writer.write(byte)
            await writer.drain()
    except (ConnectionError, OSError):
        pass


async def dripping(port: int, start: bytes, byte: bytes, every: float) -> bytes:
    """Send ``start``, then ``byte`` every ``every`` seconds until the server closes; return
    what the server said."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(start)
    task = asyncio.create_task(drip(writer, byte, every))
    try:
        return await read_until_closed(reader)
    finally:
        task.cancel()
        writer.close()


async def test_slowloris_headers_get_408_and_the_connection_is_closed(server: Serving) -> None:
    start = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-slow: "
    answers = await asyncio.gather(*(dripping(server.port, start, b"a", 0.2) for _ in range(200)))
    for raw in answers:
        openai_error(raw, 408, "request_timeout")
    await still_serves(server.port)


async def test_a_slow_body_gets_408(server: Serving) -> None:
    start = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 1000\r\n\r\n{"
    )
    answers = await asyncio.gather(*(dripping(server.port, start, b" ", 0.1) for _ in range(50)))
    for raw in answers:
        openai_error(raw, 408, "request_timeout")
        assert parsed(raw)[1]["connection"] == "close"
    await still_serves(server.port)


async def test_a_flood_of_idle_connections_is_closed(server: Serving) -> None:
    async def idle() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            return await read_until_closed(reader)
        finally:
            writer.close()

    answers = await asyncio.gather(*(idle() for _ in range(300)))
    assert answers == [b""] * 300  # closed without a word: they asked nothing
    await still_serves(server.port)


async def test_an_idle_kept_alive_connection_is_closed(server: Serving) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    body = json.dumps(CHAT).encode()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    raw = await read_until_closed(reader)  # the answer, then the close after keep-alive
    writer.close()
    assert raw.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize(
    "head",
    [
        b"x-huge: " + b"h" * 1_000_000 + b"\r\n",
        b"".join(b"x-h%d: v\r\n" % i for i in range(10_000)),
    ],
    ids=["1MB-header", "10000-headers"],
)
async def test_header_floods_get_431(server: Serving, head: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n" + head + b"\r\n")
    sending = asyncio.create_task(writer.drain())
    try:
        raw = await read_until_closed(reader)
    finally:
        sending.cancel()
        writer.close()
    openai_error(raw, 431, "headers_too_large")
    await still_serves(server.port)


@pytest.mark.parametrize("split", [0, 1, 2, 3], ids=["whole", "cr-lf-cr", "cr-lf", "cr"])
async def test_a_large_body_right_behind_its_head_is_served(server: Serving, split: int) -> None:
    # one write (or a blank line cut across two): a head well within the limit, then 200 KB
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 200_000}]})
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
    )
    data = head + body.encode()
    cut = len(head) - split if split else len(data)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(data[:cut])
    await writer.drain()
    writer.write(data[cut:])
    raw = await read_until_closed(reader)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:300]


BAD_BODIES = {
    "deep-json": (b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),
    "lone-surrogate": (
        b'{"model": "fast", "messages": [{"role": "user", "content": "\\ud800"}]}',
        400,
        "invalid_json",
    ),
    "huge-model": (
        json.dumps({**CHAT, "model": "m" * 3_000_000}).encode(),
        400,
        "invalid_value",
    ),
}


@pytest.mark.parametrize(("body", "status", "code"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_bad_bodies_get_a_clean_error(
    server: Serving, body: bytes, status: int, code: str
) -> None:
    async with httpx.AsyncClient(timeout=WAIT) as client:
        answer = await client.post(
            f"http://127.0.0.1:{server.port}/v1/chat/completions",
            content=body,
            headers={"content-type": "application/json"},
        )
    assert answer.status_code == status
    assert answer.json()["error"]["code"] == code
    assert len(answer.content) < 1000
    await still_serves(server.port)


def test_no_traceback_in_the_log(server: Serving, tmp_path: Path) -> None:
    assert not any("Traceback" in line for line in server.stderr), "\n".join(server.stderr)
