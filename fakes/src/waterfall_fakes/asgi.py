"""The fake provider as a raw ASGI application.

Raw ASGI rather than a framework response class, because every byte and every pause is scripted:
each scripted chunk is one ``http.response.body`` message, and a cut connection is an exception
raised mid-body, which ASGI servers turn into an aborted connection. A hang waits for the client
to go away (``http.disconnect``) instead of holding the server forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .control import control_reply, is_control_path
from .journal import Delivery
from .provider import FakeProvider, Reply

__all__ = ["ConnectionCut", "FakeApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ConnectionCut(Exception):
    """Raised by :class:`FakeApp` so that the server cuts the connection mid-body (scripted)."""


async def _wait(delay: float | None, disconnected: asyncio.Event) -> bool:
    """Sleep ``delay`` seconds (``None``: forever); return False if the client went away first."""
    if delay == 0:
        await asyncio.sleep(0)  # let the server notice a client that went away
        return not disconnected.is_set()
    try:
        await asyncio.wait_for(disconnected.wait(), timeout=delay)
    except TimeoutError:
        return True
    return False


class FakeApp:
    """An ASGI app answering as ``provider`` does (``GET /health``, ``GET /v1/models``, ...)."""

    def __init__(self, provider: FakeProvider | None = None) -> None:
        self.provider = provider if provider is not None else FakeProvider()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        provider = self.provider
        path = scope["path"]
        delivery: Delivery | None = None
        if is_control_path(path):
            query = scope.get("query_string", b"").decode("latin-1")
            reply = control_reply(provider, scope["method"], path, query, bytes(body))
        else:
            client = scope.get("client")
            peer = f"{client[0]}:{client[1]}" if client else None
            reply, record = provider.handle_recorded(
                scope["method"], path, headers, bytes(body), client=peer
            )
            delivery = record.delivery
        await self._play(reply, receive, send, delivery, provider.clock)

    async def _play(
        self,
        reply: Reply,
        receive: Receive,
        send: Send,
        delivery: Delivery | None,
        clock: Callable[[], float],
    ) -> None:
        """Send ``reply`` as scripted, noting in ``delivery`` how it went out."""
        log = delivery if delivery is not None else Delivery()
        disconnected = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        watcher = asyncio.ensure_future(watch())
        try:
            if not await _wait(reply.headers_delay, disconnected):
                log.finish("client_gone", clock())
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": reply.status,
                    "headers": [
                        (k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers
                    ],
                }
            )
            log.headers_at = clock()
            for i, chunk in enumerate(reply.chunks):
                if not await _wait(reply.delay_before(i), disconnected):
                    log.finish("client_gone", clock())
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                log.bytes_sent += len(chunk)
            if reply.cut:
                log.finish("cut", clock())
                raise ConnectionCut("scripted connection cut")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            log.finish("complete", clock())
        except OSError:
            log.finish("client_gone", clock())
            raise
        finally:
            watcher.cancel()
