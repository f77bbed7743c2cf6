"""httpx code that calls api.openai.com, tested with respx (the `respx` extra)."""

import httpx
import pytest
import respx

from waterfall_fakes import FakeProvider
from waterfall_fakes.respx import mock_provider


def summarize(text: str) -> str:
    """The code under test: it talks to the real OpenAI API."""
    reply = httpx.post(
        "https://api.openai.com/v1/chat/completions",
        headers={"authorization": "Bearer sk-real-key-in-production"},
        json={"model": "fake-small", "messages": [{"role": "user", "content": f"Sum up: {text}"}]},
    )
    reply.raise_for_status()
    content: str = reply.json()["choices"][0]["message"]["content"]
    return content


def test_summarize(respx_mock: respx.MockRouter) -> None:
    fake = FakeProvider(reply_words=3)
    route = mock_provider(respx_mock, fake)  # https://api.openai.com/v1/... answers from `fake`
    assert len(summarize("a long text").split()) == 3
    assert route.call_count == 1
    assert fake.requests[0].json["messages"][0]["content"] == "Sum up: a long text"


def test_summarize_surfaces_a_rate_limit(respx_mock: respx.MockRouter) -> None:
    mock_provider(respx_mock, FakeProvider(script=["rate_limit:dialect=openai,seconds=30"]))
    with pytest.raises(httpx.HTTPStatusError) as caught:
        summarize("anything")
    assert caught.value.response.status_code == 429
    assert caught.value.response.headers["x-ratelimit-reset-requests"] == "30s"
