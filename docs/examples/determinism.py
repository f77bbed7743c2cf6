import httpx

from waterfall_fakes import FakeProvider, FakeTransport, count_prompt_tokens

messages = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three waterfalls"},
]


def answer(fake: FakeProvider, **extra: object) -> dict[str, object]:
    with httpx.Client(transport=FakeTransport(fake), base_url="http://fake/v1") as client:
        body = {"model": "fake-medium", "messages": messages, **extra}
        reply: dict[str, object] = client.post("/chat/completions", json=body).json()
        return reply


# Same seed, same request number, same request: byte-identical replies.
assert answer(FakeProvider(seed=7)) == answer(FakeProvider(seed=7))
assert answer(FakeProvider(seed=7)) != answer(FakeProvider(seed=8))

# Exact usage: 3 tokens per message + 1 per word; one completion token per reply word.
assert count_prompt_tokens(messages) == (3 + 3) + (3 + 3) == 12
assert answer(FakeProvider())["usage"] == {
    "prompt_tokens": 12,
    "completion_tokens": 12,  # `reply_words` (12 unless configured)
    "total_tokens": 24,
}
short = answer(FakeProvider(), max_tokens=3)
assert short["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
assert short["choices"][0]["finish_reason"] == "length"  # type: ignore[index]
two = answer(FakeProvider(reply_words=5), n=2)
assert two["usage"] == {"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22}

# Embeddings too: 16 numbers per input, a function of the seed and the text alone.
with httpx.Client(transport=FakeTransport(FakeProvider()), base_url="http://fake/v1") as client:
    texts = ["waterfall", "cascade", "waterfall"]
    vectors = client.post("/embeddings", json={"model": "fake-small", "input": texts}).json()
first, second, third = (item["embedding"] for item in vectors["data"])
assert len(first) == 16
assert first == third != second
