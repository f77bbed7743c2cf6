"""Property tests with the strategies (pip install 'waterfall-fakes[hypothesis]')."""

import json
import re

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from waterfall_fakes import FakeProvider, FakeTransport
from waterfall_fakes.strategies import (
    chat_completion_streams,
    chunkings,
    fault_scripts,
    register_profiles,
    sse_encodings,
)

register_profiles()  # usually in conftest.py, with the profile picked by an environment variable
settings.load_profile("dev")

_EOL = re.compile(rb"\r\n|\r|\n")


class DataReader:
    """The code under test: an incremental SSE reader that keeps each event's data."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while match := _EOL.search(self._buffer):
            if match.group() == b"\r" and match.end() == len(self._buffer):
                return  # maybe the first half of a CRLF: wait for the next chunk
            line, self._buffer = self._buffer[: match.start()], self._buffer[match.end() :]
            self._line(line.decode())  # a line end never falls inside a UTF-8 character

    def close(self) -> None:
        if self._buffer.endswith(b"\r"):
            self._line(self._buffer[:-1].decode())

    def _line(self, line: str) -> None:
        if not line:  # a blank line dispatches the event
            if self._data:
                self.events.append("\n".join(self._data))
            self._data = []
            return
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value.removeprefix(" "))


@given(st.data(), chat_completion_streams())
def test_any_encoding_any_chunking(data: st.DataObject, stream: list[dict[str, object]]) -> None:
    wire = data.draw(sse_encodings(stream))  # LF, CRLF or CR; comments; event:/id:/retry: ...
    reader = DataReader()
    for chunk in data.draw(chunkings(wire)):  # split anywhere, inside characters too
        reader.feed(chunk)
    reader.close()
    assert [json.loads(event) for event in reader.events[:-1]] == stream
    assert reader.events[-1] == "[DONE]"


@given(fault_scripts(max_size=4))
def test_every_scripted_fault_is_answered(script: list[list[object]]) -> None:
    fake = FakeProvider(script=script)
    body = {"model": "fake-small", "messages": [], "stream": True}
    with httpx.Client(transport=FakeTransport(fake), base_url="http://fake/v1") as client:
        for _ in script:
            try:
                with client.stream("POST", "/chat/completions", json=body) as reply:
                    reply.read()
            except httpx.RemoteProtocolError:  # a scripted cut
                pass
    assert len(fake.requests) == len(script)
