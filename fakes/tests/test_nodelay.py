"""``TCP_NODELAY`` on every connection the fakes' servers accept.

Without it, Nagle's algorithm on the server and the client's delayed ACK stall each request after
the first on a reused keep-alive connection by about 40 ms. These tests read the option with
``getsockopt`` on the server's side of the connections, and check that requests reuse one
connection (so that the option is what matters), without timing anything.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from waterfall_fakes import FakeServer, cli
from waterfall_fakes.server import _Server

BODY = {"model": "fake-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def accepted_sockets(server: _Server) -> list[tuple[int, int]]:
    """(the client's port, TCP_NODELAY) for each connection ``server`` holds open."""
    found = []
    for connection in server.server_state.connections:
        transport = getattr(connection, "transport", None)
        assert transport is not None
        sock = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        found.append((peer[1], sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
    return found


def check(server: _Server, root: str) -> None:
    with httpx.Client(base_url=root) as client:
        answers = [client.post("/v1/chat/completions", json=BODY) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        sock = answers[-1].extensions["network_stream"].get_extra_info("socket")
        client_port = sock.getsockname()[1]
        # one connection served all three, and the server's end of it does not wait for ACKs
        assert accepted_sockets(server) == [(client_port, 1)]


@pytest.mark.loopback
def test_fake_server_sets_tcp_nodelay_on_accepted_connections() -> None:
    with FakeServer() as running:
        assert running._server is not None
        check(running._server, running.root)


@pytest.fixture
def cli_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[tuple[_Server, str]]:
    """``waterfall-fakes serve --port 0`` run in a thread of this process, and its root URL."""
    made: list[_Server] = []

    class Recorded(_Server):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    monkeypatch.setattr(cli, "_Server", Recorded)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(cli.main(["serve", "--port", "0"])))
    thread.start()
    try:
        for _ in range(1000):  # at most 10 s
            if made and made[0].started:
                break
            thread.join(0.01)
        assert made, "the server was not made"
        assert made[0].started, "the server did not start"
        url = capsys.readouterr().out.splitlines()[0]
        yield made[0], url.removesuffix("/v1")
    finally:
        if made:
            made[0].should_exit = True
        thread.join(10)
    assert codes == [0]


@pytest.mark.loopback
def test_serve_command_sets_tcp_nodelay_on_accepted_connections(
    cli_server: tuple[_Server, str],
) -> None:
    server, root = cli_server
    check(server, root)
