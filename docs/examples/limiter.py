import httpx

from waterfall_fakes import FakeProvider, FakeTransport

now = 1_700_000_000.0  # the fake reads time from `clock`, so the test moves it by hand
fake = FakeProvider(
    clock=lambda: now,
    limits={"requests": 2, "tokens": 100, "window": 60, "dialect": "openai"},
)
client = httpx.Client(transport=FakeTransport(fake), base_url="http://fake/v1")
# The limiter counts tokens as OpenAI does: prompt tokens + max_tokens (here 4 + 10).
chat = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10}


def limits(reply: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in reply.headers.items() if k.startswith("x-ratelimit-")}


first = client.post("/chat/completions", json=chat)
assert first.status_code == 200
assert limits(first) == {
    "x-ratelimit-limit-requests": "2",
    "x-ratelimit-remaining-requests": "1",
    "x-ratelimit-reset-requests": "1m0s",
    "x-ratelimit-limit-tokens": "100",
    "x-ratelimit-remaining-tokens": "86",
    "x-ratelimit-reset-tokens": "1m0s",
}

now += 15.5
assert client.post("/chat/completions", json=chat).status_code == 200
third = client.post("/chat/completions", json=chat)
assert third.status_code == 429  # the window still has 44.5 s to run
assert limits(third)["x-ratelimit-remaining-requests"] == "0"
assert limits(third)["x-ratelimit-reset-requests"] == "44.5s"

now += 44.5  # a new window
assert client.post("/chat/completions", json=chat).status_code == 200
assert [r.status for r in fake.requests] == [200, 200, 429, 200]
