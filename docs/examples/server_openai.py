from openai import OpenAI

from waterfall_fakes import FakeProvider, FakeServer

# The first request is refused with `retry-after-ms: 10`; the OpenAI SDK retries by itself.
fake = FakeProvider(script=["rate_limit:dialect=retry-after-ms,seconds=0.01"])

with FakeServer(fake) as server:
    client = OpenAI(base_url=server.url, api_key="not-a-real-key")
    stream = client.chat.completions.create(
        model="fake-small",
        messages=[{"role": "user", "content": "Hello there"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
print(text)
usage = chunks[-1].usage
assert usage is not None
assert (usage.prompt_tokens, usage.completion_tokens) == (5, 12)
assert [r.status for r in fake.requests] == [429, 200]  # one 429, then the SDK's retry
