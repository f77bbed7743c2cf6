import httpx

from waterfall_fakes import FakeProvider, FakeTransport

CHAT = {"model": "fake-small", "messages": [{"role": "user", "content": "Hi"}]}


class Clock:
    """A clock the test moves by hand: no sleeping."""

    now = 1_000.0

    def __call__(self) -> float:
        return self.now


def statuses(fake: FakeProvider, count: int, behaviour: str | None = None) -> list[int]:
    headers = {"x-fake-behaviour": behaviour} if behaviour else {}
    with httpx.Client(transport=FakeTransport(fake), base_url="http://fake/v1") as client:
        return [
            client.post("/chat/completions", json=CHAT, headers=headers).status_code
            for _ in range(count)
        ]


# A transient failure: the first request carrying this header fails, the retry succeeds.
assert statuses(FakeProvider(), 3, "when:times=1; status:code=500") == [500, 200, 200]

# A failure rate: about 20% of the requests, the same ones on every run with the same seed.
flaky = "when:p=0.2; status:code=500"
first = statuses(FakeProvider(seed=42), 200, flaky)
assert statuses(FakeProvider(seed=42), 200, flaky) == first
assert 20 <= first.count(500) <= 60

# An outage from 10 s to 70 s after the fake started, in a script step that repeats forever.
clock = Clock()
down = FakeProvider(clock=clock, script=["when:start=10,end=70; status:code=503"], repeat_last=True)
seen = []
for t in (5, 10, 69, 70):
    clock.now = 1_000.0 + t
    seen += statuses(down, 1)
assert seen == [200, 503, 503, 200]
