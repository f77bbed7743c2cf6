"""A 1 GiB non-stream answer, and one that never ends, leave ``waterfall-asgi serve``'s memory
within the bound the Security and limits page documents: its peak resident set grows by less
than ``2 * limits.max_response_bytes + 64 MiB`` over its size after a first request, with the
default ``max_response_bytes`` (64 MiB).

The upstream, in this process, writes its answers lazily (one 64 KiB block at a time, as fast
as the router reads): nothing of a gibibyte is ever held here.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from raw_http import RawRequest, RawUpstream, response
from serve_process import serve

pytestmark = [pytest.mark.loopback, pytest.mark.anyio]

MiB = 1024 * 1024
CAP = 64 * MiB  # limits.max_response_bytes, by default
BOUND = 2 * CAP + 64 * MiB  # the documented bound on the peak's growth
WAIT = 60.0  # a hang guard on each request, not a measure
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "Hi"}]}
ANSWER = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}


async def upstream(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    """``model`` says which answer: ``huge`` (1 GiB of JSON), ``endless`` (an event stream to a
    non-stream request, never ending), anything else a small one."""
    model = json.loads(request.body)["model"]
    block = b"x" * 65536
    if model == "huge":
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: 1073741824\r\n\r\n"
        )
        for _ in range(1024 * 1024 * 1024 // len(block)):  # until the router hangs up
            writer.write(block)
            await writer.drain()
    elif model == "endless":
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        event = b'data: {"choices": [{"delta": {"content": "' + block + b'"}}]}\n\n'
        framed = f"{len(event):x}\r\n".encode() + event + b"\r\n"
        while True:
            writer.write(framed)
            await writer.drain()
    else:
        writer.write(response(200, json.dumps(ANSWER).encode()))


async def test_huge_and_endless_answers_leave_memory_bounded(tmp_path: Path) -> None:
    async with RawUpstream(upstream) as up:
        config = tmp_path / "router.toml"
        config.write_text(
            f'[providers.up]\nbase_url = "{up.url}"\n\n'
            "[chains]\n"
            'fast = ["up/small"]\nhuge = ["up/huge", "up/small"]\n'
            'endless = ["up/endless", "up/small"]\n\n[ledger]\npath = ""\n\n'
            "[policy]\ndefault_cooldown = 0\n",
            encoding="utf-8",
        )
        with serve(config, "--log-level", "warning") as serving:
            url = f"http://127.0.0.1:{serving.port}/v1/chat/completions"
            async with httpx.AsyncClient(timeout=WAIT) as client:
                assert (await client.post(url, json=CHAT)).status_code == 200
                before = serving.rss_kib() * 1024
                answers = [
                    await client.post(url, json={**CHAT, "model": model})
                    for model in ["huge", "endless", "huge", "endless"]
                ]
                peak = serving.peak_rss_kib() * 1024
                after = serving.rss_kib() * 1024
            for answer in answers:  # each fell through to the small answer, whole
                assert answer.status_code == 200
                assert answer.json() == ANSWER
                trail = answer.headers["x-waterfall-attempts"]
                assert trail.endswith("too_large, up/small 200"), trail
    print(f"RSS before {before / MiB:.1f} MiB, peak {peak / MiB:.1f}, after {after / MiB:.1f}")
    assert peak - before < BOUND
    assert after - before < BOUND
