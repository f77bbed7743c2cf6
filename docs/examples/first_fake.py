import httpx

from waterfall_fakes import FakeProvider, FakeTransport

client = httpx.Client(transport=FakeTransport(FakeProvider()), base_url="http://fake/v1")
hello = {"model": "fake-small", "messages": [{"role": "user", "content": "Hello there"}]}
reply = client.post("/chat/completions", json=hello)

print(reply.json()["choices"][0]["message"]["content"])  # 12 words, made up but repeatable
# The usage is exact: 3 tokens per message + 1 per word; one completion token per reply word.
assert reply.json()["usage"] == {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17}
