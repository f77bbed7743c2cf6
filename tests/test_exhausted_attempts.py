"""The 503 ``all_providers_exhausted`` carries ``x-waterfall-attempts``, as a served answer does:
what was tried, and how each try ended, where a user needs it most."""

from __future__ import annotations

from typing import Any

import pytest
from asgi_helpers import call

from waterfall_asgi.middleware import WaterfallMiddleware
from waterfall_fakes import FakeNetwork, FakeProvider

pytestmark = pytest.mark.anyio

CHAT = {"model": "fast", "messages": [{"role": "user", "content": "hello"}]}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("payload", [CHAT, {**CHAT, "stream": True}], ids=["json", "stream"])
async def test_the_exhaustion_503_says_what_was_tried(payload: dict[str, Any]) -> None:
    clock = Clock()
    # a's 500s are evidence (each retried once, then on), b's 429 an instruction (it cools)
    scripts = {"a": ["status:code=500"] * 4, "b": ["rate_limit:dialect=retry-after,seconds=40"]}
    net = FakeNetwork({h: FakeProvider(name=h, script=s, clock=clock) for h, s in scripts.items()})
    config = {
        "providers": {h: {"base_url": f"http://{h}/v1", "api_key": f"sk-{h}"} for h in scripts},
        "chains": {"fast": ["a/fake-small", "b/fake-medium"]},
        "policy": {"backoff": 0},
    }
    app = WaterfallMiddleware(None, config, transport=net, clock=clock)
    try:
        result = await call(app, "POST", "/v1/chat/completions", payload)
        assert result.status == 503
        assert result.json()["error"]["code"] == "all_providers_exhausted"
        assert result.headers["x-waterfall-attempts"] == (
            "a/fake-small 500 retried, a/fake-small 500, b/fake-medium 429"
        )
        again = await call(app, "POST", "/v1/chat/completions", payload)  # b cools now
        assert again.status == 503
        assert again.headers["x-waterfall-attempts"] == (
            "a/fake-small 500 retried, a/fake-small 500, b/fake-medium cooling"
        )
    finally:
        await app.shutdown()
