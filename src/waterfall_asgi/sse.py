"""An incremental Server-Sent Events parser: bytes in, events out, by the WHATWG rules.

- Lines end with CRLF, LF or CR; a CR at the end of one chunk and an LF at the start of the next
  are one line end.
- Lines are decoded as UTF-8 only once complete, so a character split across chunks is never
  damaged; a leading BOM is dropped.
- ``:`` starts a comment; ``event``, ``data``, ``id`` and ``retry`` are fields (one leading space of
  the value is dropped); several ``data`` lines are joined with ``\\n``; a blank line dispatches.
- Memory is bounded: an event whose ``data`` lines add up to more than ``max_bytes`` (or whose
  line being read would take the total past it) is not parsed; it is skipped up to the next
  blank line and counted in :attr:`SSEParser.oversized`. :attr:`SSEParser.buffered` never
  exceeds ``max_bytes`` (lengths exclude line ends; a comment or another field's line counts
  only while it is being read).

Where this deliberately differs from a browser's EventSource: an event with no ``data`` is not
dispatched (as the spec says) but comments are counted, and the parser never raises on bad input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["BLANK_LINE", "SSEEvent", "SSEParser", "after_last_blank_line"]

_CR, _LF = 0x0D, 0x0A

BLANK_LINE = re.compile(rb"\n\n|\n\r|\r\r")
"""Where an event ends, give or take the LF of a CRLF: with CR, LF and CRLF line ends, every
blank line (a line end right after another) holds one of these pairs, and no other pair is one."""


def after_last_blank_line(data: bytes | bytearray, stop: int | None = None) -> int:
    """Where the bytes after the last :data:`BLANK_LINE` pair in ``data[:stop]`` begin (0 if
    there is none): scans from the end, no regex. The pairs with a CR are looked for only after
    the last ``\\n\\n``, and only if a CR comes after it (one fast scan for the byte): LF
    streams never pay for them.

    >>> after_last_blank_line(b"data: a\\n\\ndata: b\\n")
    9
    """
    stop = len(data) if stop is None else stop
    end = data.rfind(b"\n\n", 0, stop)
    if data.find(b"\r", end + 1, stop) >= 0:
        end = max(end, data.rfind(b"\n\r", end + 1, stop), data.rfind(b"\r\r", end + 1, stop))
    return end + 2 if end >= 0 else 0


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEParser:
    """Feed it bytes with :meth:`feed`; it returns the events completed by them."""

    __slots__ = (
        "_after_cr",
        "_at_start",
        "_data",
        "_event",
        "_event_bytes",
        "_id",
        "_line",
        "_line_empty",
        "_retry",
        "_skipping",
        "comments",
        "last_event_id",
        "max_bytes",
        "oversized",
    )

    def __init__(self, max_bytes: int = 64 * 1024) -> None:
        self.max_bytes = max_bytes
        self.comments = 0
        self.oversized = 0
        self.last_event_id: str | None = None
        self._line = bytearray()
        self._after_cr = False
        self._at_start = True
        self._skipping = False
        self._line_empty = True  # whether the previous line (in skip mode) was blank
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._event_bytes = 0

    @property
    def buffered(self) -> int:
        """Bytes held right now (the incomplete line and the event being built)."""
        return len(self._line) + self._event_bytes

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse ``chunk``; return the events it completed (possibly none)."""
        events: list[SSEEvent] = []
        start, n = 0, len(chunk)
        if not n:  # an empty chunk must not forget a CR that may pair with the next LF
            return events
        start = self._simple_events(chunk, events)  # (0, if not between events)
        if start == n:
            return events
        if self._after_cr and chunk[start] == _LF:
            start = 1
        self._after_cr = False
        while start < n:
            cr = chunk.find(b"\r", start)
            lf = chunk.find(b"\n", start)
            if cr < 0 and lf < 0:
                self._append(chunk[start:])
                break
            end = lf if cr < 0 else cr if lf < 0 else min(cr, lf)
            self._append(chunk[start:end])
            self._end_line(events)
            if chunk[end] == _CR:
                if end + 1 < n:
                    start = end + 2 if chunk[end + 1] == _LF else end + 1
                else:
                    self._after_cr = True
                    start = n
            else:
                start = end + 1
        return events

    def _simple_events(self, chunk: bytes, events: list[SSEEvent]) -> int:
        """The fast path (:meth:`data_spans`), as events."""
        spans: list[tuple[int, int]] = []
        start = self.data_spans(chunk, spans)
        last_id = self._id
        for begin, end in spans:
            events.append(SSEEvent(chunk[begin:end].decode("utf-8", "replace"), "message", last_id))
        return start

    def _between_events(self) -> bool:
        """Nothing of an event is held: no line, field or skipped event under way."""
        return not (
            self._line
            or self._data
            or self._after_cr  # (a chunk starting "data: " has no LF to pair with it anyway)
            or self._skipping
            or self._event
            or self._retry is not None
        )

    def plain_events(self, chunk: bytes) -> tuple[int, int]:
        """The bulk fast path, for a parser between events: if ``chunk``, up to the end of its
        last ``\n\n``, holds plain events only (each ``data: `` and one line, without CR, then
        a blank line: what most providers send), take them all in a few scans of the bytes and
        return ``(end, count)``: ``chunk[:end]`` holds ``count`` events, and each event's data
        is its line after ``data: ``. Otherwise take nothing and return ``(0, 0)``. As with
        :meth:`data_spans`, ``chunk[end:]`` must go to :meth:`feed` next."""
        if not self._between_events():
            return 0, 0
        end, count = _plain_events(chunk, self.max_bytes)
        if end:
            self._at_start = False
        return end, count

    def data_spans(self, chunk: bytes, spans: list[tuple[int, int]]) -> int:
        """The fast path, for a parser between events: take each leading ``data: ...\n\n``
        block whose only line ends are its last two bytes (what most providers send) in one
        step, appending where its data lies in ``chunk`` (``chunk[begin:end]``, not decoded) to
        ``spans``; return where the line-by-line parse must go on (0: nothing was taken, and
        then nothing is). The rest, ``chunk[returned:]``, must go to :meth:`feed` next: the
        results are those of feeding the whole chunk, to the byte, but for the events taken
        here, which are not dispatched again."""
        if not self._between_events():
            return 0
        start, cap = 0, self.max_bytes
        crs = b"\r" in chunk
        while chunk.startswith(b"data: ", start):
            end = chunk.find(b"\n\n", start)
            if end < 0 or end - start > cap:
                break
            if chunk.find(b"\n", start, end) >= 0 or (crs and chunk.find(b"\r", start, end) >= 0):
                break  # more than one line: the line-by-line parse takes it
            spans.append((start + 6, end))
            start = end + 2
        if start:
            self._at_start = False
        return start

    def _append(self, piece: bytes) -> None:
        if self._skipping or not piece:
            if piece:
                self._line_empty = False
            return
        if len(self._line) + len(piece) + self._event_bytes > self.max_bytes:
            self._start_skipping()  # checked before copying: a huge chunk is never buffered
            return
        self._line += piece

    def _start_skipping(self) -> None:
        self.oversized += 1
        self._at_start = False  # the skipped line held the stream's start (and any BOM)
        self._skipping = True
        self._line_empty = False
        self._line = bytearray()
        self._reset_event()

    def _reset_event(self) -> None:
        self._data, self._event, self._retry, self._event_bytes = [], "", None, 0

    def _end_line(self, events: list[SSEEvent]) -> None:
        if self._skipping:
            if self._line_empty:  # blank line: the oversized event is over
                self._skipping = False
            self._line_empty = True
            return
        raw = bytes(self._line)
        self._line = bytearray()
        if self._at_start:
            self._at_start = False
            if raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
        if not raw:
            if self._data:
                data = "\n".join(self._data)
                events.append(SSEEvent(data, self._event or "message", self._id, self._retry))
            self._reset_event()
            return
        if raw[0] == 0x3A:  # ':'
            self.comments += 1
            return
        line = raw.decode("utf-8", "replace")
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._event_bytes += len(raw)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self._id = self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)


def _plain_events(chunk: bytes, max_bytes: int) -> tuple[int, int]:
    """:meth:`SSEParser.plain_events` for a stream between events, without a parser.

    The check: the chunk starts with ``data: ``, and with every ``\n\ndata: `` taken out of
    ``chunk[:end]`` (``k`` of them), what is left holds no CR and no line feed but its last two;
    then every line feed is one of a pair, each pair but the last is followed by ``data: ``, and
    no run of line feeds is longer than two: ``k + 1`` events. (One ``replace`` and a
    ``memchr``: counting the line feeds instead, a byte at a time, costs more than both.)"""
    end = chunk.rfind(b"\n\n") + 2
    if end < 8 or end > max_bytes or not chunk.startswith(b"data: "):
        return 0, 0  # nothing whole, or events that may be over the cap: one at a time
    rest = (chunk if end == len(chunk) else chunk[:end]).replace(b"\n\ndata: ", b"")
    if rest.find(b"\n") != len(rest) - 2 or rest.find(b"\r") >= 0:
        return 0, 0
    return end, (end - len(rest)) // 8 + 1
