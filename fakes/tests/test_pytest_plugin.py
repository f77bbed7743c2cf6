"""The pytest plugin: its fixtures and marker, run in generated test files with ``pytester``
(in-process, warnings as errors), plus the fixtures used directly in this session."""

from __future__ import annotations

import json

import httpx
import pytest

from waterfall_fakes import FakeProvider, FakeServer, FakeTransport
from waterfall_fakes.pytest_plugin import FakeFactory

BODY = {"model": "fake-small", "messages": [{"role": "user", "content": "hi"}]}
HEADER = f"""
import json
import httpx
import pytest
BODY = {BODY!r}
RAW = json.dumps(BODY).encode()
CHAT = "/v1/chat/completions"
"""


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(HEADER + source)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-W", "error", *args)


def test_the_marker_is_declared(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.fake_config(config=None, **overrides): *"])


def test_fake_provider_is_fresh_for_each_test(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
seen = []

def test_one(fake_provider):
    assert fake_provider.handle("POST", CHAT, {}, RAW).status == 200
    seen.append(fake_provider)

def test_two(fake_provider):
    assert fake_provider is not seen[0]
    assert fake_provider.requests == []
    assert (fake_provider.config.name, fake_provider.config.script) == ("fake", ())
""",
    )
    result.assert_outcomes(passed=2)


def test_the_marker_configures_the_provider(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
from waterfall_fakes import FakeConfig

pytestmark = pytest.mark.fake_config(seed=1, name="module", reply_words=3)

@pytest.mark.fake_config(script=["rate_limit", "ok"], name="marked")
def test_script(fake_provider):
    statuses = [fake_provider.handle("POST", CHAT, {}, RAW).status for _ in range(3)]
    assert statuses == [429, 200, 200]
    assert (fake_provider.config.name, fake_provider.config.seed) == ("marked", 1)

@pytest.mark.fake_config(name="class")
class TestMerged:
    @pytest.mark.fake_config(reply_words=2)
    def test_closest_wins(self, fake_provider):
        config = fake_provider.config
        assert (config.name, config.seed, config.reply_words) == ("class", 1, 2)

@pytest.mark.fake_config(FakeConfig(name="given", seed=5), seed=6)
def test_a_config(fake_provider):
    config = fake_provider.config
    assert (config.name, config.seed, config.reply_words) == ("given", 6, 12)

@pytest.mark.fake_config({"name": "mapping"}, clock=lambda: 42.0)
def test_a_mapping_and_a_clock(fake_provider):
    assert fake_provider.config.name == "mapping"
    assert fake_provider.clock() == 42.0
""",
    )
    result.assert_outcomes(passed=4)


def test_a_bad_marker_is_a_clear_setup_error(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
@pytest.mark.fake_config(seed="nope")
def test_bad_value(fake_provider):
    pass

@pytest.mark.fake_config(colour="red")
def test_unknown_key(fake_transport):
    pass

@pytest.mark.fake_config({}, {})
def test_two_configs(fake_server):
    pass

@pytest.mark.fake_config(script=["explode"])
def test_bad_script(fake_provider):
    pass

@pytest.mark.fake_config("config.yaml")
def test_not_a_config(fake_provider):
    pass
""",
    )
    result.assert_outcomes(errors=5)
    result.stdout.fnmatch_lines(
        [
            "bad @pytest.mark.fake_config on test_a_bad_marker_is_a_clear_setup_error.py"
            "::test_bad_value: 1 validation error for FakeConfig",
            "seed",
            "  Input should be a valid integer*",
            "*::test_unknown_key: 1 validation error for FakeConfig",
            "colour",
            "  Extra inputs are not permitted*",
            "@pytest.mark.fake_config takes at most one positional argument*, got 2",
            "*::test_bad_script: 1 validation error for FakeConfig",
            "script",
            "  Value error, 'explode': kind: *",
            "*::test_not_a_config: expected a FakeConfig or a mapping, got 'config.yaml'",
        ]
    )
    assert "During handling" not in result.stdout.str()


def test_fake_transport_answers_from_fake_provider(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
@pytest.mark.fake_config(script=["rate_limit:dialect=retry-after,seconds=2"])
def test_sync(fake_transport, fake_provider):
    assert fake_transport.provider is fake_provider
    with httpx.Client(transport=fake_transport, base_url="http://fake/v1") as client:
        first = client.post("/chat/completions", json=BODY)
        second = client.post("/chat/completions", json=BODY)
    assert (first.status_code, first.headers["retry-after"]) == (429, "2")
    assert second.status_code == 200
    assert len(fake_provider.calls()) == 2
""",
    )
    result.assert_outcomes(passed=1)


def test_fake_server_is_shared_but_reset(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
import pathlib

ports = []

def test_first(fake_server, fake_provider):
    assert fake_server.provider is fake_provider
    reply = httpx.post(fake_server.url + "/chat/completions", json=BODY)
    assert reply.status_code == 200
    assert reply.headers["x-fake-name"] == "fake"
    assert [r.path for r in fake_provider.requests] == [CHAT]
    ports.append(fake_server.port)

@pytest.mark.fake_config(script=["status:code=503"], name="second")
def test_second(fake_server):
    assert fake_server.port == ports[0]
    assert fake_server.provider.requests == []
    reply = httpx.post(fake_server.url + "/chat/completions", json=BODY)
    assert (reply.status_code, reply.headers["x-fake-name"]) == (503, "second")
    assert httpx.get(fake_server.root + "/health").json()["name"] == "second"
    assert len(fake_server.provider.requests) == 2
    pathlib.Path("root.txt").write_text(fake_server.root)
""",
    )
    result.assert_outcomes(passed=2)
    root = (pytester.path / "root.txt").read_text()
    with pytest.raises(httpx.ConnectError):  # stopped at the end of the session
        httpx.get(root + "/health")


def test_fake_factory_makes_fakes_and_stops_its_servers(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
made = []

def test_factory(fake_factory):
    a = fake_factory.provider(script=["rate_limit"])
    b = fake_factory.provider()
    assert [a.config.name, b.config.name] == ["fake-1", "fake-2"]
    server_a = fake_factory.server(a)
    server_c = fake_factory.server(name="served")
    assert server_a.port != server_c.port
    assert httpx.post(server_a.url + "/chat/completions", json=BODY).status_code == 429
    assert httpx.get(server_c.root + "/health").json()["name"] == "served"
    with httpx.Client(transport=fake_factory.transport(b), base_url="http://f/v1") as client:
        assert client.post("/chat/completions", json=BODY).status_code == 200
    with pytest.raises(TypeError, match="either a provider or config overrides"):
        fake_factory.server(a, name="x")
    assert len(fake_factory.transport(seed=4).provider.requests) == 0
    assert fake_factory.servers == [server_a, server_c]
    names = [p.config.name for p in fake_factory.providers]
    assert names == ["fake-1", "fake-2", "served", "fake-4"]
    made.extend(fake_factory.servers)

def test_the_servers_are_stopped():
    assert len(made) == 2
    for server in made:
        assert "stopped" in repr(server)
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.root + "/health")
""",
    )
    result.assert_outcomes(passed=2)


def test_a_failing_test_reports_what_its_fakes_received(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
@pytest.mark.fake_config(script=["rate_limit:dialect=openai"])
def test_fails(fake_transport, fake_factory):
    fake_factory.provider(name="backup")
    with httpx.Client(transport=fake_transport, base_url="http://fake/v1") as client:
        client.post("/chat/completions", json=BODY)
        client.get("/models")
    assert False, "the router did not fall back"

def test_passes(fake_provider):
    fake_provider.handle("GET", "/health", {}, b"")
""",
    )
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*the router did not fall back*",
            "*- waterfall-fakes (call) -*",
            "'fake' received 2 requests, a script of 1 step",
            "  1. POST /v1/chat/completions -> 429  [rate_limit:dialect=openai] by script:0",
            "  2. GET /v1/models -> 200",
            "'backup' received 0 requests",
        ]
    )
    assert result.stdout.str().count("waterfall-fakes (") == 1


# -- the fixtures in this very session -----------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.fake_config(script=["truncate:events=1"])
async def test_the_fixtures_work_here_too(
    fake_transport: FakeTransport, fake_provider: FakeProvider
) -> None:
    async with httpx.AsyncClient(transport=fake_transport, base_url="http://f/v1") as client:
        reply = await client.post("/chat/completions", json={**BODY, "stream": True})
    data = [line for line in reply.text.split("\n") if line.startswith("data: ")]
    assert len(data) == 1
    assert json.loads(data[0][6:])["choices"][0]["delta"]["role"] == "assistant"
    assert [r.status for r in fake_provider.requests] == [200]


def test_the_session_server_answers_plainly_between_tests(request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue("_waterfall_fake_server")
    assert httpx.get(server.root + "/health").json()["name"] == "waterfall-fakes-idle"


@pytest.mark.loopback
def test_fake_server_here(fake_server: FakeServer, fake_provider: FakeProvider) -> None:
    assert httpx.get(fake_server.url + "/models").status_code == 200
    assert [r.path for r in fake_provider.requests] == ["/v1/models"]


def test_the_factory_outside_pytest() -> None:
    factory = FakeFactory()
    server = factory.server()
    assert repr(factory) == "FakeFactory(providers=1, servers=1)"
    assert httpx.get(server.root + "/health").json()["name"] == "fake-1"
    factory.close()
    factory.close()
    assert factory.servers == []
    assert "stopped" in repr(server)
