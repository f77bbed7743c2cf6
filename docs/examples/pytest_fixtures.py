"""Tests that use the waterfall-fakes pytest plugin (installed with the package: no import)."""

import httpx
import pytest

from waterfall_fakes import FakeProvider, FakeServer, FakeTransport
from waterfall_fakes.pytest_plugin import FakeFactory

HI = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]}


def test_fake_provider_and_transport(
    fake_provider: FakeProvider, fake_transport: FakeTransport
) -> None:
    # A fresh fake for every test, and a transport that answers from it.
    with httpx.Client(transport=fake_transport, base_url="http://fake/v1") as client:
        assert client.post("/chat/completions", json=HI).status_code == 200
    assert [r.path for r in fake_provider.requests] == ["/v1/chat/completions"]


@pytest.mark.fake_config(script=["rate_limit:dialect=retry-after-ms,seconds=0.5", "ok"])
def test_the_marker_configures_the_fake(fake_transport: FakeTransport) -> None:
    with httpx.Client(transport=fake_transport, base_url="http://fake/v1") as client:
        first = client.post("/chat/completions", json=HI)
        second = client.post("/chat/completions", json=HI)
    assert (first.status_code, first.headers["retry-after-ms"]) == (429, "500")
    assert second.status_code == 200


@pytest.mark.fake_config(name="groq", seed=7)
def test_fake_server(fake_server: FakeServer) -> None:
    # A real loopback server (shared by the session) answering from this test's fake.
    assert fake_server.url.startswith("http://127.0.0.1:")
    reply = httpx.post(fake_server.url + "/chat/completions", json=HI)
    assert reply.headers["x-fake-name"] == "groq"
    assert len(fake_server.provider.requests) == 1


def test_fake_factory(fake_factory: FakeFactory) -> None:
    # As many fakes as the test needs; its servers stop when the test ends.
    primary = fake_factory.server(script=["status:code=503"])
    backup = fake_factory.server()
    statuses = [
        httpx.post(s.url + "/chat/completions", json=HI).status_code for s in (primary, backup)
    ]
    assert statuses == [503, 200]
    assert [p.config.name for p in fake_factory.providers] == ["fake-1", "fake-2"]
