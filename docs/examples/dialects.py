import httpx

from waterfall_fakes import FakeProvider, FakeTransport

# What `rate_limit:dialect=...,seconds=2.5` sends, with the fake's clock at 1_700_000_000
# (2023-11-14 22:13:20 UTC). Each 429 also carries an OpenAI-style JSON error body.
EXPECTED = {
    "retry-after": {"retry-after": "3"},  # whole seconds, rounded up
    "retry-after-date": {"retry-after": "Tue, 14 Nov 2023 22:13:23 GMT"},
    "retry-after-ms": {"retry-after-ms": "2500"},
    "openai": {
        "x-ratelimit-limit-requests": "1",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "2.5s",
        "x-ratelimit-limit-tokens": "1",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "2.5s",
    },
    "openrouter": {
        "x-ratelimit-limit": "1",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": "1700000002500",  # Unix time in milliseconds
    },
    "anthropic": {
        "retry-after": "3",
        **{
            f"anthropic-ratelimit-{what}-{field}": value
            for what in ("requests", "tokens", "input-tokens", "output-tokens")
            for field, value in (
                ("limit", "1"),
                ("remaining", "0"),
                ("reset", "2023-11-14T22:13:23Z"),
            )
        },  # resets as RFC 3339 times, rounded up to the second
    },
    "none": {},  # no hint at all: the client has to guess
}

fake = FakeProvider(clock=lambda: 1_700_000_000.0)
client = httpx.Client(transport=FakeTransport(fake), base_url="http://fake/v1")
chat = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]}
for dialect, headers in EXPECTED.items():
    behaviour = {"x-fake-behaviour": f"rate_limit:dialect={dialect},seconds=2.5"}
    reply = client.post("/chat/completions", json=chat, headers=behaviour)
    assert reply.status_code == 429
    hints = {k: v for k, v in reply.headers.items() if "retry" in k or "ratelimit" in k}
    assert hints == headers, (dialect, hints)
    assert reply.json()["error"]["code"] == "rate_limit_exceeded"
