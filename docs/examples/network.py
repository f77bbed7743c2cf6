import httpx

from waterfall_fakes import FakeNetwork, FakeProvider

network = FakeNetwork(
    {
        "openai": FakeProvider(name="openai", script=["rate_limit:dialect=openai"]),
        "groq": FakeProvider(name="groq"),
    }
)
chat = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]}
with httpx.Client(transport=network) as client:
    assert client.post("http://openai/v1/chat/completions", json=chat).status_code == 429
    assert client.post("http://groq/v1/chat/completions", json=chat).status_code == 200
    network.down.add("groq")  # now it refuses connections
    try:
        client.post("http://groq/v1/chat/completions", json=chat)
        raise AssertionError("expected a connection error")
    except httpx.ConnectError:
        pass
    try:
        client.get("http://nobody/health")  # no fake behind this name
        raise AssertionError("expected a connection error")
    except httpx.ConnectError:
        pass

assert [len(network[name].requests) for name in ("openai", "groq")] == [1, 1]
