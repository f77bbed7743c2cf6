"""Relaying an accepted SSE stream so that an error can always be appended cleanly.

The relay forwards bytes unchanged but only up to the last complete event: the bytes of an event
still arriving are held back until its blank line comes. When the upstream then fails, the
unfinished event is dropped and an explicit SSE error event follows, so the client never sees a
half event glued to the error. An event larger than the cap is passed through as it arrives (memory
stays bounded); if the upstream fails in the middle of one, the error event is preceded by a blank
line, the best that can be done.

A blank line is a line terminator right after another; with CR, LF and CRLF terminators every
such pair contains ``\\n\\n``, ``\\n\\r`` or ``\\r\\r``, and no other byte pair is one.
"""

from __future__ import annotations

from .errors import error_body

__all__ = ["EventAligner", "error_event"]


def error_event(message: str, code: str, type_: str = "upstream_error") -> bytes:
    """An SSE event carrying an OpenAI-style error object."""
    return b"data: " + error_body(message, type_, code) + b"\n\n"


class EventAligner:
    """Hold back the bytes of an unfinished event; see the module docs."""

    __slots__ = ("_pending", "cap", "misaligned")

    def __init__(self, cap: int = 64 * 1024) -> None:
        self.cap = cap
        self._pending = bytearray()
        self.misaligned = False

    @property
    def pending(self) -> int:
        """Bytes held back right now."""
        return len(self._pending)

    def feed(self, chunk: bytes) -> bytes:
        """Take ``chunk``; return what may be sent now (possibly nothing)."""
        pending = self._pending
        start = max(0, len(pending) - 1)
        pending += chunk
        end = max(
            pending.rfind(b"\n\n", start),
            pending.rfind(b"\n\r", start),
            pending.rfind(b"\r\r", start),
        )
        if end >= 0:
            ready = bytes(pending[: end + 2])
            del pending[: end + 2]
            self.misaligned = False
            if len(pending) > self.cap:
                return ready + self._pass_through()
            return ready
        if len(pending) > self.cap:
            return self._pass_through()
        return b""

    def _pass_through(self) -> bytes:
        out = bytes(self._pending)
        self._pending.clear()
        self.misaligned = True
        return out

    def flush(self) -> bytes:
        """The stream ended cleanly: everything held back, unchanged."""
        out = bytes(self._pending)
        self._pending.clear()
        return out

    def fail(self, event: bytes) -> bytes:
        """The stream failed: drop the unfinished event and return ``event`` to send instead."""
        self._pending.clear()
        return (b"\n\n" + event) if self.misaligned else event
