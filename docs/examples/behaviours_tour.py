"""Every behaviour, and what a client sees: the claims of the table above, checked."""

import json
from dataclasses import dataclass
from typing import Any

import httpx

from waterfall_fakes import FakeProvider, FakeTransport

client = httpx.Client(transport=FakeTransport(FakeProvider()), base_url="http://fake/v1")
HELLO = [{"role": "user", "content": "Hello there"}]


@dataclass
class Seen:
    """What the client received: status, headers and the raw body chunks."""

    status: int
    headers: httpx.Headers
    chunks: list[bytes]

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode()

    def data(self) -> list[str]:
        """The `data:` payloads of a stream."""
        lines = self.text.splitlines()
        return [line.removeprefix("data: ") for line in lines if line.startswith("data:")]

    def json(self) -> Any:
        return json.loads(self.text)


def chat(behaviour: str, *, stream: bool = True, timeout: float = 5.0, **more: Any) -> Seen:
    """One chat completion with `behaviour` in the x-fake-behaviour header."""
    body: dict[str, Any] = {"model": "fake-small", "messages": HELLO, **more}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    headers = {"x-fake-behaviour": behaviour}
    kwargs: dict[str, Any] = {"json": body, "headers": headers, "timeout": timeout}
    with client.stream("POST", "/chat/completions", **kwargs) as response:
        return Seen(response.status_code, response.headers, list(response.iter_raw()))


normal = chat("ok").data()  # role, 12 words, finish_reason, usage, [DONE]
assert len(normal) == 16
assert normal[-1] == "[DONE]"

seen = chat("rate_limit:dialect=retry-after,seconds=1.5")
assert (seen.status, seen.headers["retry-after"]) == (429, "2")  # whole seconds, rounded up
assert seen.json()["error"]["code"] == "rate_limit_exceeded"

seen = chat("insufficient_balance")
assert (seen.status, seen.json()["error"]["code"]) == (402, "insufficient_balance")

seen = chat("status:code=503")
assert (seen.status, seen.json()["error"]["type"]) == (503, "server_error")

try:  # hang: no headers at all, so the client's read timeout fires
    chat("hang", timeout=0.05)
    raise AssertionError("expected a timeout")
except httpx.ReadTimeout:
    pass

try:  # slow_first_byte: the headers come at once, the first body byte later
    chat("slow_first_byte:seconds=1", timeout=0.05)
    raise AssertionError("expected a timeout")
except httpx.ReadTimeout:
    pass

events = chat("truncate:events=3").data()
assert len(events) == 3  # and then a clean end of the body, without [DONE]
assert "[DONE]" not in events

try:
    chat("cut:bytes=40")
    raise AssertionError("expected the connection to be cut")
except httpx.RemoteProtocolError:
    pass

try:  # cut after 3 tokens: the role event, three words, then the connection drops
    chat("cut:tokens=3")
    raise AssertionError("expected the connection to be cut")
except httpx.RemoteProtocolError:
    pass

try:  # stall: two events, then silence with the connection open
    chat("stall:events=2", timeout=0.05)
    raise AssertionError("expected a timeout")
except httpx.ReadTimeout:
    pass

seen = chat("context_length_exceeded", stream=False)
assert (seen.status, seen.json()["error"]["code"]) == (400, "context_length_exceeded")
assert seen.json()["error"]["param"] == "messages"

seen = chat("content_filter", stream=False)
assert (seen.status, seen.json()["error"]["code"]) == (400, "content_policy_violation")
seen = chat("content_filter:after=2", stream=False)
assert seen.json()["choices"][0]["finish_reason"] == "content_filter"

assert chat("prefill:mode=reject").status == 200  # the last message is the user's: no prefill

LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {}}}
seen = chat("tool_call", stream=False, tools=[LOOKUP])  # a call to the first tool offered
assert seen.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "lookup"
assert chat("tool_call", stream=False).json()["choices"][0]["finish_reason"] == "stop"  # no tools
assert chat("when:times=0; status:code=500").status == 200  # a gate that lets nothing through

events = chat("no_done").data()
assert '"usage":{' in events[-1]  # the usage chunk is the last thing sent
assert '"finish_reason":"stop"' in events[-2]  # after the finish: a complete answer

assert chat("double_done").data()[-2:] == ["[DONE]", "[DONE]"]

events = chat("error_event:after=2").data()
assert len(events) == 3
assert json.loads(events[2])["error"]["code"] == "server_error"

events = chat("malformed_event:after=2").data()
assert events[2] == '{"choices": [{"delta": {"content": "oops'  # not JSON
assert (len(events), events[-1]) == (17, "[DONE]")

events = chat("big_event:size=70000").data()
assert len(events[1].encode()) >= 70_000
assert json.loads(events[1])["choices"]  # still valid JSON

assert not any('"usage":{' in e for e in chat("no_usage").data())
assert "usage" not in chat("no_usage", stream=False).json()

try:  # slow_chunks: the first chunk comes at once, every later one after the pause
    chat("slow_chunks:seconds=1", timeout=0.05)
    raise AssertionError("expected a timeout")
except httpx.ReadTimeout:
    pass

text = chat("keepalive:every=5").text
assert text.startswith(": keep-alive\n\ndata: ")
assert text.count(": keep-alive") == 4

text = chat("fields").text
assert text.startswith("id: 1\nevent: completion\ndata: {")
assert text.endswith("id: 16\nevent: completion\ndata: [DONE]\n\n")

text = chat("line_endings:style=crlf").text
assert text.endswith("data: [DONE]\r\n\r\n")
assert "\n" not in text.replace("\r\n", "")

assert {len(c) for c in chat("chunking:size=1").chunks} == {1}
assert [len(c) for c in chat("chunking:at=5|9").chunks[:2]] == [5, 4]

print("every behaviour does what the table says")
