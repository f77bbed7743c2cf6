import httpx

from waterfall_fakes import FakeConfig, FakeProvider, FakeTransport

CHAT = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]}


def statuses(fake: FakeProvider, count: int, **headers: str) -> list[int]:
    with httpx.Client(transport=FakeTransport(fake), base_url="http://fake/v1") as client:
        return [
            client.post("/chat/completions", json=CHAT, headers=headers).status_code
            for _ in range(count)
        ]


# One step per request; after the last step the fake answers normally...
once = FakeProvider(script=["rate_limit", "status:code=503", "ok"])
assert statuses(once, 5) == [429, 503, 200, 200, 200]

# ...or, with cycle, starts again from the top.
storm = FakeProvider(script=["rate_limit", "rate_limit", "ok"], cycle=True)
assert statuses(storm, 6) == [429, 429, 200, 429, 429, 200]

# A step may hold several behaviours; the header's behaviours are added to the step's own.
both = FakeProvider(script=["chunking:size=5; no_usage"])
statuses(both, 1, **{"x-fake-behaviour": "no_done"})
assert [b.kind for b in both.requests[0].behaviours] == ["chunking", "no_usage", "no_done"]

# Only chat and embeddings requests use up steps: /health and /v1/models do not.
# A config is plain data too: steps in header syntax or as objects, validated by pydantic.
config = FakeConfig.model_validate(
    {
        "name": "groq",
        "script": [
            [{"kind": "rate_limit", "dialect": "openai", "seconds": 20}],
            "status:code=502",
        ],
    }
)
assert statuses(FakeProvider(config), 3) == [429, 502, 200]

# A header the fake cannot parse is the client's mistake: 400, and the reason.
with httpx.Client(transport=FakeTransport(FakeProvider()), base_url="http://fake/v1") as client:
    bad = client.post("/chat/completions", json=CHAT, headers={"x-fake-behaviour": "nap"})
assert bad.status_code == 400
assert bad.json()["error"]["code"] == "invalid_fake_behaviour"
print(bad.json()["error"]["message"])
