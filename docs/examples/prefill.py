import httpx

from waterfall_fakes import FakeModel, FakeProvider, FakeTransport

fake = FakeProvider(
    models=(
        FakeModel(id="small-window", context_length=50, enforce_context=True),
        FakeModel(id="continues", prefill="honour"),
        FakeModel(id="no-prefill", prefill="reject"),
    )
)
client = httpx.Client(transport=FakeTransport(fake), base_url="http://fake/v1")
ASK = {"role": "user", "content": "Tell me a story"}

# A prompt of 3 + 40 tokens and max_tokens=10 do not fit in 50.
long = {"role": "user", "content": "word " * 40}
too_long = client.post(
    "/chat/completions",
    json={"model": "small-window", "messages": [long], "max_tokens": 10},
)
error = too_long.json()["error"]
assert (too_long.status_code, error["code"], error["param"]) == (
    400,
    "context_length_exceeded",
    "messages",
)
assert error["message"].startswith("This model's maximum context length is 50 tokens.")

# A prefill honoured: the reply goes on from "Once upon a", 12 words in all.
prefill = {"role": "assistant", "content": "Once upon a"}
reply = client.post("/chat/completions", json={"model": "continues", "messages": [ASK, prefill]})
rest = reply.json()["choices"][0]["message"]["content"]
assert rest.startswith(" ")
assert len(("Once upon a" + rest).split()) == 12

# A prefill rejected.
rejected = client.post(
    "/chat/completions", json={"model": "no-prefill", "messages": [ASK, prefill]}
)
assert (rejected.status_code, rejected.json()["error"]["code"]) == (400, "prefill_not_supported")
