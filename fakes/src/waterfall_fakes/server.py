"""Serving on a loopback port with uvicorn in a background thread: any ASGI app
(:class:`LoopbackServer`), or a fake provider (:class:`FakeServer`).

>>> import httpx
>>> from waterfall_fakes import FakeServer
>>> with FakeServer() as server:
...     httpx.get(server.root + "/health").json()["status"]
'ok'
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Literal, Self

import uvicorn

from .asgi import ConnectionCut, FakeApp
from .provider import FakeProvider

__all__ = ["FakeServer", "LoopbackServer"]


class _HideScriptedCuts(logging.Filter):
    """Keep uvicorn from logging a traceback for each connection the script cut on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, ConnectionCut):
                return False
            exc = exc.__cause__ or exc.__context__
        return True


_FILTER = _HideScriptedCuts()


def _listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening); ``OSError`` if it cannot be.

    The socket is made naming TCP (``IPPROTO_TCP``): asyncio sets ``TCP_NODELAY`` only on the
    connections accepted from such a socket. Without it Nagle's algorithm holds back a reply's
    last small write until the client's delayed ACK arrives, about 40 ms for every request after
    the first on a reused keep-alive connection.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, adjusted for a fake.

    Stopping closes the open connections at once instead of waiting for the requests in flight
    (a scripted hang would otherwise hold the shutdown until uvicorn's grace period runs out),
    and a handled SIGINT or SIGTERM ends the process normally: uvicorn re-raises the signal after
    its shutdown, which would make ``waterfall-fakes serve`` die of it instead of exiting 0.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if isinstance(transport, asyncio.BaseTransport):
                transport.close()
        await asyncio.sleep(0)  # let the closed connections report it
        await super().shutdown(sockets)


class LoopbackServer:
    """Serve the ASGI ``app`` on ``host:port`` (port 0: a free one) until stopped.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. ``lifespan`` is passed to
    uvicorn (``"on"`` runs the app's startup and shutdown).
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        lifespan: Literal["on", "off", "auto"] = "off",
    ) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self._log_level = log_level
        self._lifespan = lifespan
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.port = port

    @property
    def root(self) -> str:
        """``http://host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI-style base URL, ``http://host:port/v1``."""
        return self.root + "/v1"

    def start(self) -> Self:
        """Bind, start serving in a background thread and wait until it accepts connections."""
        if self._thread is not None:
            raise RuntimeError(f"this {type(self).__name__} is already running")
        sock = _listen(self.host, self._requested_port)
        self.port = sock.getsockname()[1]
        self._socket = sock
        config = uvicorn.Config(
            self.app,
            log_level=self._log_level,
            lifespan=self._lifespan,
            access_log=False,
            timeout_graceful_shutdown=1,
            # asyncio's own loop even where uvloop is installed: there, a request left hanging
            # at stop() got a 500 after the graceful timeout instead of its connection closed
            loop="asyncio",
        )
        self._server = server = _Server(config)
        logging.getLogger("uvicorn.error").addFilter(_FILTER)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"loopback-{self.port}", daemon=True
        )
        self._thread.start()
        while not server.started:
            if not self._thread.is_alive():
                sock.close()
                self._server = self._thread = self._socket = None
                raise RuntimeError("the server failed to start")
            self._thread.join(0.01)
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and wait for the thread to end."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(10)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._thread is not None else "stopped"
        return f"{type(self).__name__}({self.root}, {state})"


class FakeServer(LoopbackServer):
    """Serve ``provider`` (a fresh fake if none) on a loopback port until stopped.

    ``url`` is the base URL to give an OpenAI client (it ends in ``/v1``); ``root`` is the
    server root.
    """

    def __init__(
        self,
        provider: FakeProvider | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
    ) -> None:
        self._fake_app = FakeApp(provider if provider is not None else FakeProvider())
        super().__init__(self._fake_app, host=host, port=port, log_level=log_level)

    @property
    def provider(self) -> FakeProvider:
        """The fake answering requests; assign another to swap it while the server runs."""
        return self._fake_app.provider

    @provider.setter
    def provider(self, value: FakeProvider) -> None:
        self._fake_app.provider = value

    def __repr__(self) -> str:
        state = "running" if self._thread is not None else "stopped"
        return f"FakeServer({self.root}, {state}, {self.provider!r})"
