"""FakeTransport: scripted chunks arrive one by one, delays honour the read timeout, cuts raise."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from waterfall_fakes import BEHAVIOUR_HEADER, FakeProvider, FakeTransport, Reply

CHAT = "/v1/chat/completions"
STREAM = {
    "model": "fake-small",
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 4,
    "stream": True,
}
SHORT = httpx.Timeout(5.0, read=0.05)


def expected(spec: str, body: dict[str, Any] = STREAM) -> Reply:
    """What a twin fake answers to the same first request."""
    return FakeProvider().handle("POST", CHAT, {BEHAVIOUR_HEADER: spec}, json.dumps(body).encode())


def headers(spec: str) -> dict[str, str]:
    return {BEHAVIOUR_HEADER: spec}


def async_client(fake: FakeProvider | None = None, **kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=FakeTransport(fake), base_url="http://fake", **kw)


def sync_client(fake: FakeProvider | None = None, **kw: Any) -> httpx.Client:
    return httpx.Client(transport=FakeTransport(fake), base_url="http://fake", **kw)


def collect(r: httpx.Response, into: list[bytes]) -> None:
    """Read raw chunks into ``into`` until the stream ends or fails."""
    for chunk in r.iter_raw():
        into.append(chunk)


async def acollect(r: httpx.Response, into: list[bytes]) -> None:
    """Read raw chunks into ``into`` until the stream ends or fails."""
    async for chunk in r.aiter_raw():
        into.append(chunk)


def post(c: httpx.Client | httpx.AsyncClient, spec: str, body: dict[str, Any] = STREAM) -> Any:
    content = json.dumps(body).encode()
    return c.stream("POST", CHAT, content=content, headers=headers(spec))


# -- chunks ----------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "spec", ["ok", "chunking:size=1", "chunking:at=3|10|11", "chunking:seed=2,max_size=9"]
)
async def test_aiter_raw_yields_the_scripted_chunks(spec: str) -> None:
    want = expected(spec)
    async with async_client() as c, post(c, spec) as r:
        assert r.status_code == 200
        got = [chunk async for chunk in r.aiter_raw()]
    assert got == list(want.chunks)
    assert len(got) > 3


@pytest.mark.parametrize(
    "spec", ["ok", "chunking:size=1", "line_endings:style=cr; chunking:size=5"]
)
def test_iter_raw_yields_the_scripted_chunks(spec: str) -> None:
    want = expected(spec)
    with sync_client() as c, post(c, spec) as r:
        got = list(r.iter_raw())
    assert got == list(want.chunks)


def test_response_headers_and_status_are_the_replys() -> None:
    want = expected("status:code=503")
    with sync_client() as c:
        r = c.post(CHAT, json=STREAM, headers=headers("status:code=503"))
    assert r.status_code == 503
    assert r.headers.multi_items() == list(want.headers)
    assert r.content == want.body
    assert r.request.url == "http://fake/v1/chat/completions"


def test_default_transport_makes_its_own_fake() -> None:
    transport = FakeTransport()
    assert isinstance(transport.provider, FakeProvider)
    with httpx.Client(transport=transport, base_url="http://fake") as c:
        assert c.get("/health").json() == {"status": "ok", "name": "fake"}
    assert [r.path for r in transport.provider.requests] == ["/health"]


@pytest.mark.anyio
async def test_async_client_records_the_body() -> None:
    fake = FakeProvider()
    async with async_client(fake) as c:
        r = await c.post(CHAT, json=STREAM)
    assert r.status_code == 200
    assert fake.requests[0].json == STREAM


# -- timeouts --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_hang_raises_read_timeout() -> None:
    fake = FakeProvider(script=["hang"])
    async with async_client(fake, timeout=SHORT) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post(CHAT, json=STREAM)
        r = await c.post(CHAT, json=STREAM)  # the script moved on
    assert r.status_code == 200
    assert [q.status for q in fake.requests] == [200, 200]


def test_sync_hang_raises_read_timeout() -> None:
    fake = FakeProvider(script=["hang:seconds=30"])
    with sync_client(fake, timeout=SHORT) as c, pytest.raises(httpx.ReadTimeout):
        c.post(CHAT, json=STREAM)


@pytest.mark.anyio
async def test_short_hang_within_the_timeout_answers() -> None:
    fake = FakeProvider(script=["hang:seconds=0.01"])
    async with async_client(fake, timeout=httpx.Timeout(5.0)) as c:
        r = await c.post(CHAT, json=STREAM)
    assert r.status_code == 200
    with sync_client(FakeProvider(script=["hang:seconds=0.01"]), timeout=None) as c:
        assert c.post(CHAT, json=STREAM).status_code == 200


@pytest.mark.anyio
async def test_async_slow_first_byte_times_out_after_the_headers() -> None:
    async with async_client(timeout=SHORT) as c, post(c, "slow_first_byte:seconds=30") as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        got: list[bytes] = []
        with pytest.raises(httpx.ReadTimeout):
            await acollect(r, got)
    assert got == []


def test_sync_slow_first_byte_times_out_after_the_headers() -> None:
    with sync_client(timeout=SHORT) as c, post(c, "slow_first_byte:seconds=30") as r:
        assert r.status_code == 200
        got: list[bytes] = []
        with pytest.raises(httpx.ReadTimeout):
            collect(r, got)
    assert got == []


@pytest.mark.anyio
async def test_async_slow_chunks_time_out_after_the_first_chunk() -> None:
    want = expected("slow_chunks:seconds=30")
    async with async_client(timeout=SHORT) as c, post(c, "slow_chunks:seconds=30") as r:
        got: list[bytes] = []
        with pytest.raises(httpx.ReadTimeout):
            await acollect(r, got)
    assert got == [want.chunks[0]]


def test_sync_slow_chunks_time_out_after_the_first_chunk() -> None:
    want = expected("slow_chunks:seconds=30; chunking:size=10")
    with sync_client(timeout=SHORT) as c, post(c, "slow_chunks:seconds=30; chunking:size=10") as r:
        got: list[bytes] = []
        with pytest.raises(httpx.ReadTimeout):
            collect(r, got)
    assert got == [want.chunks[0]]
    assert len(got[0]) == 10


@pytest.mark.anyio
async def test_slow_chunks_within_the_timeout_arrive_whole() -> None:
    spec = "slow_chunks:seconds=0.005; slow_first_byte:seconds=0.01"
    want = expected(spec)
    async with async_client(timeout=httpx.Timeout(5.0)) as c, post(c, spec) as r:
        got = [chunk async for chunk in r.aiter_raw()]
    assert got == list(want.chunks)


# -- cuts ------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_cut_raises_after_the_scripted_bytes() -> None:
    spec = "chunking:size=16; cut:bytes=100"
    full = expected("ok").body
    async with async_client() as c, post(c, spec) as r:
        got: list[bytes] = []
        with pytest.raises(httpx.RemoteProtocolError):
            await acollect(r, got)
    assert [len(g) for g in got] == [16] * 6 + [4]
    assert b"".join(got) == full[:100]


def test_sync_cut_raises_after_the_scripted_bytes() -> None:
    full = expected("ok").body
    with sync_client() as c, post(c, "cut:bytes=7") as r:
        got: list[bytes] = []
        with pytest.raises(httpx.RemoteProtocolError, match="peer closed connection"):
            collect(r, got)
    assert got == [full[:7]]


def test_cut_of_a_json_answer() -> None:
    body = {k: v for k, v in STREAM.items() if k != "stream"}
    with sync_client() as c, pytest.raises(httpx.RemoteProtocolError):
        c.post(CHAT, json=body, headers=headers("cut:bytes=20"))
    with sync_client() as c, post(c, "cut:bytes=20", body) as r:
        assert r.headers["content-length"] == str(len(expected("ok", body).body))
        with pytest.raises(httpx.RemoteProtocolError):
            r.read()


@pytest.mark.anyio
async def test_cut_at_zero_bytes() -> None:
    async with async_client() as c, post(c, "cut") as r:
        assert r.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await r.aread()


@pytest.mark.anyio
async def test_truncate_ends_cleanly() -> None:
    want = expected("truncate:events=2")
    async with async_client() as c, post(c, "truncate:events=2") as r:
        assert await r.aread() == want.body
