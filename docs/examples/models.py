from decimal import Decimal

import httpx

from waterfall_fakes import FakeModel, FakeProvider, FakeTransport

fake = FakeProvider(
    models=[
        FakeModel(id="tiny", usd_prompt=Decimal("0.0000001"), sats_completion=Decimal("0.0002")),
        FakeModel(id="big", context_length=200_000, usd_request=Decimal("0.01")),
    ]
)
client = httpx.Client(transport=FakeTransport(fake), base_url="http://fake/v1")
# parse_float=Decimal keeps the published numbers exact.
listing = client.get("/models").json(parse_float=Decimal)
tiny, big = listing["data"]

assert [m["id"] for m in listing["data"]] == ["tiny", "big"]
# OpenRouter style: US dollars per token, as strings.
assert tiny["pricing"] == {"prompt": "0.0000001", "completion": "0.000002", "request": "0"}
# Routstr style: sats per token, as JSON numbers.
assert tiny["sats_pricing"] == {
    "prompt": Decimal("0.001"),
    "completion": Decimal("0.0002"),
    "request": 0,
}
assert (big["context_length"], big["pricing"]["request"]) == (200_000, "0.01")

# A model the fake does not serve is a 404, as with a real provider.
missing = client.post("/chat/completions", json={"model": "gpt-9", "messages": []})
assert (missing.status_code, missing.json()["error"]["code"]) == (404, "model_not_found")
