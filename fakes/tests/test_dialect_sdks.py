"""The official SDKs against a loopback fake in the Responses API and Anthropic Messages dialects:
answers, streams, tool calls and exact usage, and how each SDK reacts to each fault (found by
running the SDKs, then pinned)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from waterfall_fakes import FakeProvider, FakeServer, argument_fragments

pytestmark = pytest.mark.loopback

HELLO: list[Any] = [{"role": "user", "content": "Say hello in five words"}]
PROMPT = 3 + 5
WORDS = 12
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    with FakeServer(FakeProvider(api_key="sk-test", clock=lambda: 1_700_000_000.0)) as running:
        yield running


@pytest.fixture
def fake(server: FakeServer) -> FakeProvider:
    server.provider.reset()
    return server.provider


@pytest.fixture
def oai(server: FakeServer, fake: FakeProvider) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url, api_key="sk-test", max_retries=0, timeout=5) as c:
        yield c


@pytest.fixture
def ant(server: FakeServer, fake: FakeProvider) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=server.root, api_key="sk-test", max_retries=0, timeout=5
    ) as c:
        yield c


def fault(spec: str) -> dict[str, str]:
    return {"x-fake-behaviour": spec}


# -- the Responses API through openai ------------------------------------------------------------
def test_responses_create(oai: openai.OpenAI, fake: FakeProvider) -> None:
    response = oai.responses.create(model="fake-small", input=HELLO)
    assert response.status == "completed"
    assert len(response.output_text.split()) == WORDS
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (PROMPT, WORDS)
    assert response.usage.total_tokens == PROMPT + WORDS
    assert fake.requests[-1].usage == response.usage.model_dump(exclude_none=True)


def test_responses_stream(oai: openai.OpenAI, fake: FakeProvider) -> None:
    with oai.responses.stream(model="fake-small", input=HELLO) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text
    assert len(deltas) == WORDS
    assert final.usage is not None
    assert final.usage.output_tokens == WORDS
    assert fake.requests[-1].usage == final.usage.model_dump(exclude_none=True)


def test_responses_function_call(oai: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    response = oai.responses.create(
        model="fake-small", input=HELLO, tools=tools, tool_choice="required"
    )
    [call] = response.output
    assert call.type == "function_call"
    assert call.name == "get_weather"
    assert response.usage is not None
    assert response.usage.output_tokens == len(argument_fragments(call.arguments))
    with oai.responses.stream(
        model="fake-small", input=HELLO, tools=tools, extra_headers=fault("tool_call")
    ) as stream:
        args = "".join(
            e.delta for e in stream if e.type == "response.function_call_arguments.delta"
        )
        final = stream.get_final_response()
    assert final.output[0].type == "function_call"
    assert args == final.output[0].arguments


def test_responses_faults_as_openai_sees_them(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        oai.responses.create(model="fake-small", input=HELLO, extra_headers=fault("rate_limit"))
    with pytest.raises(openai.InternalServerError) as overloaded:
        oai.responses.create(
            model="fake-small", input=HELLO, extra_headers=fault("status:code=529")
        )
    assert overloaded.value.status_code == 529
    # a stream without response.completed (missing, an error event, response.failed)
    for spec in ("no_done", "error_event:after=4", "error_event:after=4,failed=true"):
        with (
            pytest.raises(RuntimeError, match=r"response\.completed"),
            oai.responses.stream(model="fake-small", input=HELLO, extra_headers=fault(spec)) as s,
        ):
            s.get_final_response()
    with (
        pytest.raises(openai.APIConnectionError),
        oai.responses.stream(
            model="fake-small", input=HELLO, extra_headers=fault("cut:tokens=2")
        ) as s,
    ):
        s.get_final_response()


# -- Anthropic Messages through anthropic ------------------------------------------------------
def test_messages_create(ant: anthropic.Anthropic, fake: FakeProvider) -> None:
    message = ant.messages.create(model="fake-small", max_tokens=100, messages=HELLO)
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    assert len(message.content[0].text.split()) == WORDS
    assert (message.usage.input_tokens, message.usage.output_tokens) == (PROMPT, WORDS)
    sent = fake.requests[-1].headers  # this SDK sends the key as a Bearer token
    assert "sk-test" in (sent.get("x-api-key"), sent.get("authorization", "")[7:])
    assert "anthropic-version" in fake.requests[-1].headers
    assert fake.requests[-1].usage == message.usage.model_dump(exclude_none=True)


def test_messages_stream(ant: anthropic.Anthropic, fake: FakeProvider) -> None:
    with ant.messages.stream(model="fake-small", max_tokens=100, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.content[0].type == "text"
    assert text == final.content[0].text
    assert final.usage.output_tokens == WORDS
    assert fake.requests[-1].usage is not None
    assert fake.requests[-1].usage["output_tokens"] == WORDS
    assert fake.requests[-1].usage["input_tokens"] == PROMPT


def test_messages_tool_use(ant: anthropic.Anthropic) -> None:
    tools: Any = [{"name": "get_weather", "input_schema": WEATHER}]
    with ant.messages.stream(
        model="fake-small",
        max_tokens=100,
        messages=HELLO,
        tools=tools,
        tool_choice={"type": "tool", "name": "get_weather"},
    ) as stream:
        final = stream.get_final_message()
    [block] = final.content
    assert block.type == "tool_use"
    assert block.name == "get_weather"
    assert set(block.input) == {"city"}
    assert final.stop_reason == "tool_use"


def test_messages_faults_as_anthropic_sees_them(ant: anthropic.Anthropic) -> None:
    def create(spec: str) -> Any:
        return ant.messages.create(
            model="fake-small", max_tokens=100, messages=HELLO, extra_headers=fault(spec)
        )

    with pytest.raises(anthropic.RateLimitError) as limited:
        create("rate_limit:dialect=anthropic,seconds=3")
    assert limited.value.response.headers["retry-after"] == "3"
    assert limited.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        create("status:code=529")
    assert overloaded.value.status_code == 529
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(
            base_url=str(ant.base_url), api_key="wrong", max_retries=0
        ).messages.create(model="fake-small", max_tokens=10, messages=HELLO)

    def stream(spec: str) -> Any:
        with ant.messages.stream(
            model="fake-small", max_tokens=100, messages=HELLO, extra_headers=fault(spec)
        ) as s:
            return s.get_final_message()

    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        stream("error_event:after=4,code=overloaded_error,message=Overloaded")
    # the SDK hands over a partial message when message_stop never comes: only a relay that
    # checks for it can tell
    partial = stream("truncate:events=5")
    assert partial.stop_reason is None
    assert len(partial.content[0].text.split()) == 2
    assert stream("no_done").stop_reason == "end_turn"
    with pytest.raises(httpx2.RemoteProtocolError):
        stream("cut:tokens=2")
