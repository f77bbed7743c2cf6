import httpx

from waterfall_fakes import FakeConfig, FakeProvider, FakeTransport, Rule

# Rules in a config (the same shape in JSON, TOML or YAML files)...
config = FakeConfig.model_validate(
    {
        "seed": 7,
        "rules": [
            {"name": "no-tools", "tools": True, "behaviours": "status:code=400"},
            {"name": "flaky-streams", "stream": True, "p": 0.1, "behaviours": "cut:tokens=3"},
        ],
    }
)
fake = FakeProvider(config)

# ...and from Python: the third request for fake-large gets a 503, whatever comes between.
fake.add_rule(Rule(name="third-large", model="fake-large", nth=3, behaviours="status:code=503"))
# Queued behaviours: exactly the next 2 requests that mention "invoice" are rate limited.
fake.queue("rate_limit:seconds=5", count=2, messages=r"\binvoice\b")


def ask(model: str, text: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    with httpx.Client(transport=FakeTransport(fake), base_url="http://fake/v1") as client:
        return client.post("/chat/completions", json=body).status_code


assert ask("fake-small", "the invoice, please") == 429
assert ask("fake-large", "hello") == 200
assert ask("fake-large", "the invoice again") == 429  # queued; and fake-large's second
assert ask("fake-small", "one more invoice") == 200  # the queue is spent
assert ask("fake-large", "hello") == 503  # the third fake-large request

# What each request got, and why: the rule's name, and the chances drawn from the seed.
assert fake.requests[0].answered_by == ("rule:queue-0",)
assert fake.requests[4].answered_by == ("rule:third-large",)
status = {s.rule.name: (s.matched, s.applied) for s in fake.rules()}
assert status == {"no-tools": (0, 0), "flaky-streams": (0, 0), "third-large": (3, 1)}
