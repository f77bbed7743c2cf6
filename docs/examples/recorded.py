import httpx

from waterfall_fakes import FakeProvider, FakeTransport

fake = FakeProvider(script=["rate_limit"])
client = httpx.Client(transport=FakeTransport(fake), base_url="http://fake/v1")
chat = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]}

client.get("/models")
client.post("/chat/completions", json=chat, headers={"authorization": "Bearer sk-test"})
client.post("/chat/completions", json=chat, headers={"x-fake-behaviour": "no_usage"})

assert [(r.method, r.path, r.status) for r in fake.requests] == [
    ("GET", "/v1/models", 200),
    ("POST", "/v1/chat/completions", 429),
    ("POST", "/v1/chat/completions", 200),
]
first, second = fake.calls()  # the requests to /v1/chat/completions
assert first.json == chat  # the parsed body (`body` holds the raw bytes)
assert first.headers["authorization"] == "Bearer sk-test"  # header names are lower-case
assert [b.kind for b in first.behaviours] == ["rate_limit"]  # what the fake applied
assert [b.kind for b in second.behaviours] == ["no_usage"]

fake.reset()  # forget the requests, rewind the script, empty the rate limiter
assert fake.requests == []
assert client.post("/chat/completions", json=chat).status_code == 429
