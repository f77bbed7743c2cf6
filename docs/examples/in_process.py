import asyncio

import httpx

from waterfall_fakes import FakeProvider, FakeTransport

fake = FakeProvider()
CHAT = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}], "stream": True}


async def main() -> None:
    async with httpx.AsyncClient(
        transport=FakeTransport(fake), base_url="http://fake/v1", timeout=0.1
    ) as client:
        # Exactly the scripted chunks, one aiter_raw() item each: here 7 bytes apiece.
        seven = {"x-fake-behaviour": "chunking:size=7"}
        async with client.stream("POST", "/chat/completions", json=CHAT, headers=seven) as reply:
            chunks = [chunk async for chunk in reply.aiter_raw()]
        assert {len(chunk) for chunk in chunks[:-1]} == {7}  # the last chunk holds the rest
        assert b"".join(chunks).endswith(b"data: [DONE]\n\n")

        # A hang longer than the read timeout fails as a real connection would.
        hang = {"x-fake-behaviour": "hang"}
        try:
            await client.post("/chat/completions", json=CHAT, headers=hang)
        except httpx.ReadTimeout:
            print("hang -> httpx.ReadTimeout after the 0.1 s read timeout")
        else:
            raise AssertionError("expected httpx.ReadTimeout")


asyncio.run(main())

# The same transport serves sync clients. A cut ends the body with RemoteProtocolError.
with httpx.Client(transport=FakeTransport(fake), base_url="http://fake/v1") as client:
    received = bytearray()
    try:
        cut = {"x-fake-behaviour": "cut:bytes=100"}
        with client.stream("POST", "/chat/completions", json=CHAT, headers=cut) as reply:
            for chunk in reply.iter_raw():
                received += chunk
    except httpx.RemoteProtocolError:
        print(f"cut -> httpx.RemoteProtocolError after {len(received)} bytes")
    assert len(received) == 100
