"""The observer on its own: bytes in, in any pieces; what the stream said about usage out."""

import json

from waterfall_asgi import StreamObserver


def event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chunk(choices: list[object], usage: object = None) -> bytes:
    return event({"id": "chatcmpl-1", "model": "gpt-4o-mini", "choices": choices, "usage": usage})


stream = b"".join(
    [
        chunk([{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]),
        b": a comment, as some providers send to keep the connection alive\n\n",
        b"data: " + b"x" * 70_000 + b"\n\n",  # one event larger than the 64 KiB cap
        chunk([{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]),
        chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
        chunk([], {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}),
        b"data: [DONE]\n\n",
    ]
)

observer = StreamObserver()
for start in range(0, len(stream), 1000):  # the pieces need not end where events do
    observer.feed(stream[start : start + 1000])
    assert observer.buffered <= 64 * 1024  # memory stays bounded, whatever arrives

result = observer.result
assert result.complete  # data: [DONE] arrived
assert (result.prompt_tokens, result.completion_tokens, result.total_tokens) == (9, 2, 11)
assert result.finish_reasons == {0: "stop"}  # per choice index
assert (result.id, result.model, result.error) == ("chatcmpl-1", "gpt-4o-mini", None)
assert (result.events, result.oversized, result.failures) == (5, 1, 0)

# A stream cut before [DONE] is not complete, even with every token counted.
cut = StreamObserver()
cut.feed(stream[: stream.index(b"data: [DONE]")])
assert not cut.result.complete
assert cut.result.total_tokens == 11
