"""One fake, three dialects: the official SDKs of OpenAI and Anthropic against it."""

import anthropic
import openai

from waterfall_fakes import FakeProvider, FakeServer

fake = FakeProvider(api_key="sk-test")
with (
    FakeServer(fake) as server,
    openai.OpenAI(base_url=server.url, api_key="sk-test", max_retries=0) as oai,
    anthropic.Anthropic(base_url=server.root, api_key="sk-test", max_retries=0) as ant,
):
    # The Responses API, not streamed and streamed: typed events, no [DONE]
    response = oai.responses.create(model="fake-small", input="Say hello")
    assert response.status == "completed"
    assert response.usage is not None
    assert response.usage.input_tokens == 5
    with oai.responses.create(model="fake-small", input="Say hello", stream=True) as events:
        kinds = [event.type for event in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"

    # Anthropic Messages (x-api-key and anthropic-version, as the SDK sends them)
    hello = [{"role": "user", "content": "Say hello"}]
    message = ant.messages.create(model="fake-small", max_tokens=100, messages=hello)
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 12
    with ant.messages.stream(model="fake-small", max_tokens=100, messages=hello) as stream:
        text = stream.get_final_text()
    assert len(text.split()) == 12

    # A scripted tool call: a Messages tool_use block
    weather = {
        "name": "get_weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    called = ant.messages.create(
        model="fake-small",
        max_tokens=100,
        messages=hello,
        tools=[weather],
        extra_headers={"x-fake-behaviour": "tool_call"},
    )
    assert called.stop_reason == "tool_use"
    assert called.content[0].type == "tool_use"

    # A 529 in Anthropic's shape
    overloaded = None
    try:
        ant.messages.create(
            model="fake-small",
            max_tokens=100,
            messages=hello,
            extra_headers={"x-fake-behaviour": "status:code=529"},
        )
    except anthropic.APIStatusError as exc:
        overloaded = exc
    assert overloaded is not None
    assert overloaded.status_code == 529
    assert overloaded.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }

# The journal records each answer's usage in its own dialect's words
for record in fake.requests:
    usage = record.usage or {}
    print(record.path, record.status, usage.get("input_tokens"), usage.get("output_tokens"))
