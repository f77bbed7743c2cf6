"""Relaying an accepted SSE stream: bytes unchanged, event by event, with a clean end always.

The relay knows no API: the request's :class:`~waterfall_asgi.dialects.Dialect` reads the stream
(its observer), says what proves it complete (its terminal event) and writes the error events,
in its own shape (chat's are below; the Responses API's and Anthropic's are ``event: error``).
It forwards upstream bytes unchanged but only in whole events: the bytes of an event still
arriving are held back until its blank line comes. That is what makes a clean ending possible:

- when the upstream fails, the unfinished event is dropped and an explicit SSE error event follows
  (``stream_interrupted``), never a half event glued to the error;
- when it sends no byte for ``stall`` seconds once the stream has begun, it is given up the same
  way (``stream_stalled``);
- when a chat stream closes cleanly without ``data: [DONE]`` after the whole answer (every
  choice has its finish reason, and the usage chunk came if usage was asked for: see
  :meth:`~waterfall_asgi.usage.UsageResult.answered`), the relay appends the missing
  ``data: [DONE]`` (the dialect's ``terminal``; an unfinished event held back is dropped first,
  as on a failure) and the stream is a success; with any choice unfinished, or in a dialect
  without such a rule (the others: only their terminal event completes them), an error event
  says so (``stream_incomplete``), unless the upstream's own error event already did;
- when it fails or stalls once the stream's terminal event has come (``[DONE]``,
  ``message_stop``, ``response.completed``: :attr:`~waterfall_asgi.usage.UsageResult.complete`),
  nothing is lost: the stream ends as on a clean close, a success, with no error event after its
  last one (the Anthropic and OpenAI SDKs raise at an error event even after a whole answer);
- when the router injected ``stream_options.include_usage`` for a client that did not ask, the
  usage-only chunk (``choices: []``) is removed whole, the one chunk such a client would choke on
  (the others keep the ``"usage": null`` the provider then adds to them);
- an event larger than the cap is passed through as it arrives (memory stays bounded); if the
  upstream fails in the middle of one, the error event is preceded by a blank line.

The dialect's observer (chat's :class:`~waterfall_asgi.usage.StreamObserver`) reads the same whole
events (so only the aligner holds an unfinished event, and the observer parses each event once,
whole). When the
client goes away, the upstream is drained (not relayed) for up to ``drain_seconds`` so that usage
and cost are still recorded, then closed.

A blank line is a line terminator right after another; with CR, LF and CRLF terminators every
such pair contains ``\\n\\n``, ``\\n\\r`` or ``\\r\\r``, and no other byte pair is one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import Deployment
from .continuation import Continuation, Relayed, relayed_text, rewrite_events
from .dialects import DIALECTS, Dialect, StreamReader
from .errors import error_body
from .ledger import Status
from .router import Attempt, Served
from .sse import BLANK_LINE, SSEParser, after_last_blank_line
from .upstream import UpstreamError
from .usage import _EMPTY_CHOICES, StreamObserver, UsageResult, usage_only_chunk

__all__ = [
    "ClientWatch",
    "EventAligner",
    "RelayOutcome",
    "StreamPart",
    "WatchStarter",
    "error_event",
    "relay_stream",
]

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]


_CHAT = DIALECTS["chat"]


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

    def feed(self, chunk: bytes) -> list[bytes]:
        """Take ``chunk``; return the complete events it finished, each as its own bytes (and,
        past the cap, the unfinished one as it is)."""
        pending = self._pending
        pending += chunk
        blocks: list[bytes] = []
        start = 0
        for match in BLANK_LINE.finditer(pending):
            blocks.append(bytes(pending[start : match.end()]))
            start = match.end()
        if start:
            del pending[:start]
            self.misaligned = False
        if len(pending) > self.cap:
            blocks.append(bytes(pending))
            pending.clear()
            self.misaligned = True
        return blocks

    def take(self, chunk: bytes) -> bytes:
        """Take ``chunk``; return, as one piece, everything up to the end of the last blank line
        held (and, past the cap, the unfinished event as it is). The same bytes as
        :meth:`feed`'s events joined, give or take a blank line's terminator, without cutting
        them apart: the relay sends them in one piece anyway."""
        pending = self._pending
        data: bytes | bytearray = chunk
        if pending:
            pending += chunk
            data = pending
        cut = after_last_blank_line(data)
        if not cut:
            if not pending:
                pending += chunk
            out = b""
        else:
            if pending:
                out = bytes(pending[:cut])
                del pending[:cut]
            else:
                out = chunk[:cut]
                pending += chunk[cut:]
            self.misaligned = False
        if len(pending) > self.cap:
            out += pending
            pending.clear()
            self.misaligned = True
        return out

    def flush(self) -> bytes:
        """The stream ended cleanly: everything held back, unchanged."""
        out = bytes(self._pending)
        self._pending.clear()
        return out

    def fail(self, event: bytes) -> bytes:
        """The stream failed: drop the unfinished event (blank lines held back are kept: they
        are whole) and return what to send instead, ``event`` included."""
        pending = bytes(self._pending)
        self._pending.clear()
        kept = pending if _only_whole_comments(pending) else b""
        return kept + ((b"\n\n" + event) if self.misaligned else event)


_LINE_END = re.compile(rb"\r\n|\r|\n")


def _only_whole_comments(pending: bytes) -> bool:
    """Whether held-back bytes are complete blank or comment lines only: safe to send before an
    error event, since they add nothing to it (a field line would join the error's event)."""
    if not pending or pending[-1:] not in (b"\r", b"\n"):
        return not pending
    lines = _LINE_END.split(pending)[:-1]
    return all(not line or line.startswith(b":") for line in lines)


def _strip_usage(
    whole: bytes, plain: int, usage_only: Sequence[tuple[int, int]], skip_lf: bool
) -> tuple[bytes, bool]:
    """``whole`` (a piece the aligner handed over) without its usage-only events, and whether
    an LF that begins the next piece is to be cut too.

    An event is cut from its first line to the end of the blank line after it (CRLF included,
    even when its LF comes in the next piece: ``skip_lf`` says the last piece's cut event ended
    with CR): the same bytes whatever the reads were. The observer may have read the events
    already: ``whole[:plain]`` is plain events, and ``usage_only`` where the usage-only ones
    among them lie (:attr:`StreamObserver.plain`, :attr:`StreamObserver.usage_only`); only
    the rest is searched."""
    if skip_lf and whole[:1] == b"\n":  # (then it is no piece of plain events)
        whole = whole[1:]
    skip_lf = False
    kept, start = [], 0  # start: where the bytes still to keep begin
    for begin, end in usage_only:
        kept.append(whole[start:begin])
        start = end
    for found in _EMPTY_CHOICES.finditer(whole, plain):  # most pieces have none: no work
        at = found.start()
        if at < start:
            continue
        # the event around it: from the end of the blank line before to the one after
        begin = max(start, after_last_blank_line(whole, at))
        after = BLANK_LINE.search(whole, found.end())
        if after is None:  # an oversized event's unfinished part: as it is
            break
        end = after.end()
        block = whole[begin:end]
        if not _is_usage_block(block):
            continue
        kept.append(whole[start : end - len(block.lstrip(b"\r\n"))])  # blank lines stay
        start = end
        if whole[end - 1 : end] == b"\r":  # the LF of a CRLF is the event's too
            if whole[end : end + 1] == b"\n":
                start += 1
            elif end == len(whole):
                skip_lf = True
    if not kept:
        return whole, skip_lf
    kept.append(whole[start:])
    return b"".join(kept), skip_lf


def _is_usage_block(block: bytes) -> bool:
    if not _EMPTY_CHOICES.search(block):  # cheap: most blocks have choices, so no parse
        return False
    events = SSEParser().feed(block + b"\n\n")
    return len(events) == 1 and usage_only_chunk(events[0].data)


class ClientWatch:
    """Listens for the client's ``http.disconnect`` in one task, for the rest of a request.

    Whoever holds the request at the time says what a disconnect does (:attr:`on_gone`, called
    once, from the watch's task); :attr:`gone` tells whether it came. Servers drop sends to a
    client that left without saying so, so this is the only way to learn it.

    With ``start=False`` it listens only once :meth:`start` is called: the router starts the
    watches of the requests still running after a few tens of milliseconds (see
    :class:`WatchStarter`), so a quick request never pays for a task of its own.
    """

    __slots__ = ("_receive", "_starter", "_task", "gone", "on_gone")

    def __init__(
        self,
        receive: Receive,
        on_gone: Callable[[], object] | None = None,
        *,
        start: bool = True,
    ) -> None:
        self.gone = False
        self.on_gone = on_gone
        self._receive: Receive | None = receive
        self._task: asyncio.Task[None] | None = None
        self._starter: WatchStarter | None = None
        if start:
            self.start()

    @property
    def listening(self) -> bool:
        """Whether the watch's task has been started."""
        return self._task is not None

    def start(self) -> None:
        """Start listening, if it has not yet and :meth:`close` has not been called."""
        receive = self._receive
        if self._task is None and receive is not None:
            if self._starter is not None:  # (started by hand: its starter need not wait)
                self._starter.discard(self)
                self._starter = None
            self._task = asyncio.get_running_loop().create_task(self._listen(receive))

    async def _listen(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self.on_gone is not None:
            self.on_gone()

    def close(self) -> None:
        """Stop listening (the request is over); a watch not started never starts.

        A server answers a pending ``receive()`` with ``http.disconnect`` once the response is
        complete (uvicorn does), so the watch is let end by itself on the next turn of the loop
        and only cancelled if it has not: a cancelled task leaves reference cycles behind, one
        set per request for the garbage collector."""
        self._receive = None
        if self._starter is not None:
            self._starter.discard(self)
            self._starter = None
        task = self._task
        if task is not None and not task.done():
            task.get_loop().call_soon(_cancel_pending, task)


def _cancel_pending(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()


class WatchStarter:
    """Starts the :class:`ClientWatch` of each request still running ``delay`` to ``2 * delay``
    seconds after :meth:`watch` made it, on one timer shared by all requests (that runs only
    while some watch waits). Most requests end sooner and never start theirs: a task, its
    coroutine, context and futures, and its wake-ups on the loop are saved on each of them.
    A client that leaves is then noticed at most ``2 * delay`` seconds later than with a watch
    started at once. It works on one event loop at a time (a new loop starts afresh)."""

    __slots__ = ("_handle", "_loop", "_tick", "_waiting", "delay")

    def __init__(self, delay: float = 0.025) -> None:
        if not delay > 0:
            raise ValueError("delay must be positive")
        self.delay = delay
        self._waiting: dict[ClientWatch, int] = {}  # each watch: the tick it was added at
        self._tick = 0
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, receive: Receive, on_gone: Callable[[], object] | None = None) -> ClientWatch:
        """A watch for a request that begins now, started later if the request still runs."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # (the watches of another loop are that loop's)
            self.close()
            self._loop = loop
        watch = ClientWatch(receive, on_gone, start=False)
        watch._starter = self
        self._waiting[watch] = self._tick
        if self._handle is None:
            self._handle = loop.call_later(self.delay, self._run)
        return watch

    def discard(self, watch: ClientWatch) -> None:
        """Forget ``watch`` (its request is over)."""
        self._waiting.pop(watch, None)

    @property
    def waiting(self) -> int:
        """How many watches wait to be started."""
        return len(self._waiting)

    def _run(self) -> None:
        tick = self._tick
        self._tick = tick + 1
        due = []
        for watch, added in self._waiting.items():  # (oldest first)
            if added >= tick:  # added since the last run: less than `delay` ago, maybe
                break
            due.append(watch)
        for watch in due:
            del self._waiting[watch]
            watch.start()
        loop = self._loop
        self._handle = loop.call_later(self.delay, self._run) if self._waiting and loop else None

    def close(self) -> None:
        """Stop the timer and forget the waiting watches (they never start)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        for watch in self._waiting:
            watch._starter = None
        self._waiting.clear()


@dataclass
class StreamPart:
    """A part of a continued stream that failed, and was continued (see
    :mod:`~waterfall_asgi.continuation`)."""

    deployment: Deployment
    usage: UsageResult
    ended: str
    """How it ended, as a record's ``error`` says it (``stream_stalled: no byte for 15s``)."""


@dataclass
class RelayOutcome:
    """How a relayed stream ended, and what it said about usage."""

    status: Status
    usage: UsageResult
    """What the (last) upstream said."""
    error: str | None = None
    client_gone: bool = False
    parts: Sequence[StreamPart] = ()
    """The parts before the last of a continued stream, in order (none: not continued)."""
    attempts: Sequence[Attempt] = ()
    """The calls made to continue the stream (whether or not one did)."""
    deployment: Deployment | None = None
    """The entry that served the last part of a continued stream."""


async def relay_stream(
    served: Served,
    send: Send,
    receive: Receive,
    *,
    strip_usage: bool = False,
    drain_seconds: float = 5.0,
    request_id: str | None = None,
    closing_event: Callable[[UsageResult], bytes | None] | None = None,
    watch: ClientWatch | None = None,
    choices: int = 1,
    usage: bool = False,
    stall: float | None = None,
    continuation: Continuation | None = None,
    redact: Callable[[bytes], bytes] | None = None,
    dialect: Dialect = _CHAT,
) -> RelayOutcome:
    """Relay the rest of ``served`` (its ``prefix`` first) to the client; the response start has
    been sent already. ``closing_event`` may add one last event after a complete stream.
    ``watch`` is the request's :class:`ClientWatch`, if it has one already (else the relay
    listens to ``receive`` itself). ``choices`` (the request's ``n``) and ``usage`` (whether
    usage was asked for, by the client or the router) say when a stream without ``[DONE]`` is
    whole anyway; ``stall`` bounds the wait for each read, if it is shorter than the served
    response's read timeout. With a ``continuation``, a stream that fails after it began is
    continued elsewhere if it can be (see :mod:`.continuation`). ``redact`` cleans what is sent
    from the first error event on (see :class:`~waterfall_asgi.redact.Redactor`). ``dialect``
    reads the stream and writes its error events (see :mod:`~waterfall_asgi.dialects`)."""
    if stall is not None and stall < served.read_timeout:
        served.read_timeout = stall
    state = (
        _Relay(send, strip_usage, drain_seconds, request_id, dialect=dialect)
        if continuation is None
        else _Recording(send, strip_usage, drain_seconds, request_id)
    )
    state.redact = redact
    own_watch = watch is None
    watcher = ClientWatch(receive) if watch is None else watch
    watcher.on_gone = state.client_left
    if watcher.gone:
        state.client_left()
    failure: BaseException | None = None
    out = b""  # what to send next: sent at once, unless the upstream has nothing more to send
    try:
        out = state.relay(served.prefix)
        # The stream's end already here (it often came in the same read as the last events):
        # those events go with the end of the response, in one message.
        while not served.at_end():
            if out:
                await state.forward(out)
                out = b""
            chunk = await served.read_chunk()
            if not chunk:
                break
            out = state.relay(chunk)
    except (TimeoutError, UpstreamError) as exc:
        failure = exc
    except asyncio.CancelledError:
        if not state.gone or state.task is None:
            raise
        state.task.uncancel()  # the drain's deadline, not a cancellation from outside
    finally:
        watcher.on_gone = None
        if own_watch and continuation is None:
            watcher.close()
        if state.drain is not None:
            state.drain.cancel()
        await served.aclose()
    if failure is not None and state.observer.result.complete:
        # The terminal event came: a connection that then breaks, or stays open without a
        # byte, has lost nothing (many servers never send the last chunk of a chunked body).
        failure = None
    if continuation is not None:
        try:
            return await _continue(
                state,
                served,
                continuation,
                watcher,
                out,
                failure,
                (choices, usage),
                closing_event,
            )
        finally:
            if own_watch:
                watcher.close()
    if failure is None and not state.observer.result.complete:
        # A clean close without its end: whole if the answer is (judged on whole events only).
        whole = dialect.answered(state.observer.result, choices, usage)
        return await state.end(out, None, closing_event, whole)
    return await state.end(out, failure, closing_event, stall=served.read_timeout)


class _Relay(EventAligner):
    """One relayed stream's state (see :func:`relay_stream`): the aligner's, and the rest, in
    one object (what a stream holds while it waits is walked by every young collection)."""

    __slots__ = (
        "dialect",
        "drain",
        "drain_seconds",
        "gone",
        "observer",
        "redact",
        "send",
        "skip_lf",
        "strip_usage",
        "task",
    )

    def __init__(
        self,
        send: Send,
        strip_usage: bool,
        drain_seconds: float,
        request_id: str | None,
        redact: Callable[[bytes], bytes] | None = None,
        dialect: Dialect = _CHAT,
    ) -> None:
        super().__init__()
        self.redact = redact
        self.dialect = dialect
        self.observer: StreamReader = dialect.stream_observer(request_id)
        self.strip_usage = strip_usage
        self.skip_lf = False  # (see _strip_usage)
        self.send = send
        self.drain_seconds = drain_seconds
        self.task = asyncio.current_task()
        self.gone = False  # the client left: nothing is sent from then on
        self.drain: asyncio.TimerHandle | None = None  # when the drain ends

    def client_left(self) -> None:
        """From now on nothing is sent; the upstream is read (for usage) until the drain ends."""
        if self.gone or self.task is None:
            return
        self.gone = True
        self.drain = self.task.get_loop().call_later(self.drain_seconds, self.task.cancel)

    def relay(self, chunk: bytes) -> bytes:
        """Observe the whole events ``chunk`` completes; return what of them to send."""
        whole = self.take(chunk)
        if not whole:
            return whole
        observer = self.observer
        observer.feed(whole)
        if self.gone:
            return b""
        if observer.result.error is not None and self.redact is not None:
            whole = self.redact(whole)  # an error event: it may echo the router's secrets
        if self.strip_usage:  # (only chat asks for usage: its observer says where it lies)
            assert isinstance(observer, StreamObserver)
            whole, self.skip_lf = _strip_usage(
                whole, observer.plain, observer.usage_only, self.skip_lf
            )
        return whole

    async def forward(self, body: bytes) -> None:
        try:
            await self.send({"type": "http.response.body", "body": body, "more_body": True})
        except OSError:  # a server that reports the gone client by raising
            self.client_left()

    async def end(
        self,
        held: bytes,
        failure: BaseException | None,
        closing_event: Callable[[UsageResult], bytes | None] | None,
        whole: bool = False,
        stall: float = 0.0,
    ) -> RelayOutcome:
        """Send the stream's last piece (``held``, whole events not sent yet, first); say how
        it ended. ``whole``: a stream without its end (``[DONE]``) whose answer is whole;
        ``stall``: the read timeout a ``TimeoutError`` failure means."""
        observer = self.observer
        usage = observer.result
        dialect = self.dialect

        def error_event(message: str, code: str) -> bytes:
            return dialect.error_event(message, code, seen=usage)

        if self.gone:
            return _gone(usage)
        if failure is not None:
            if isinstance(failure, TimeoutError):
                tail = self.fail(
                    error_event(
                        f"The upstream stream stalled: no byte for {stall:g}s after it began.",
                        "stream_stalled",
                    )
                )
                why = f"stream_stalled: no byte for {stall:g}s"
                outcome = RelayOutcome("stream_incomplete", usage, why)
            else:
                kind = (
                    failure.name if isinstance(failure, UpstreamError) else type(failure).__name__
                )
                tail = self.fail(
                    error_event(
                        f"The upstream stream failed after it began ({kind}).",
                        "stream_interrupted",
                    )
                )
                outcome = RelayOutcome("upstream_error", usage, f"stream_interrupted: {kind}")
        elif not usage.complete and (not whole or dialect.terminal is None):
            # (after the upstream's own error event, nothing more: it said why)
            tail = self.fail(
                b""
                if usage.error is not None
                else error_event(dialect.incomplete_message, "stream_incomplete")
            )
            outcome = RelayOutcome("stream_incomplete", usage, f"no {dialect.terminal_name}")
        elif not usage.complete:  # whole but for its end ([DONE]): the relay adds it
            assert dialect.terminal is not None
            tail = self.fail(dialect.terminal)
            if self.skip_lf and tail[:1] == b"\n":  # the LF of a usage event cut out
                tail = tail[1:]
            if closing_event is not None:
                tail += closing_event(usage) or b""
            outcome = RelayOutcome("success", usage, f"upstream sent no {dialect.terminal_name}")
        else:
            tail = self.flush()
            if tail:  # held back only for want of a blank line: whole, as far as it goes
                observer.feed(tail)
                if self.strip_usage:
                    assert isinstance(observer, StreamObserver)
                    tail, self.skip_lf = _strip_usage(
                        tail, observer.plain, observer.usage_only, self.skip_lf
                    )
            if closing_event is not None and usage.error is None:  # only after a clean stream
                tail += closing_event(usage) or b""
            outcome = RelayOutcome("success", usage)
        if usage.error is not None:
            outcome = RelayOutcome("upstream_error", usage, f"error event: {_code(usage.error)}")
        try:
            await self.send({"type": "http.response.body", "body": held + tail, "more_body": False})
        except OSError:  # a server that reports the gone client by raising (see forward)
            return _gone(usage)
        return outcome


class _Recording(_Relay):
    """A relay that keeps the whole events it handed over, for a continuation to read."""

    __slots__ = ("pieces",)

    def __init__(
        self, send: Send, strip_usage: bool, drain_seconds: float, request_id: str | None
    ) -> None:
        super().__init__(send, strip_usage, drain_seconds, request_id)
        self.pieces: list[bytes] = []

    def take(self, chunk: bytes) -> bytes:
        whole = super().take(chunk)
        if whole:
            self.pieces.append(whole)
        return whole


class _Continued(_Recording):
    """The relay of a continuation: its events written as the first part's (see
    :func:`~waterfall_asgi.continuation.rewrite_events`)."""

    __slots__ = ("head",)

    def __init__(
        self,
        send: Send,
        strip_usage: bool,
        drain_seconds: float,
        request_id: str | None,
        head: Relayed,
    ) -> None:
        super().__init__(send, strip_usage, drain_seconds, request_id)
        self.head = head

    def relay(self, chunk: bytes) -> bytes:
        whole = self.take(chunk)
        if not whole:
            return whole
        self.observer.feed(whole)
        if self.gone:
            return b""
        return rewrite_events(whole, self.head, self.strip_usage)


def _failed(state: _Relay, failure: BaseException | None, choices: int, usage: bool) -> bool:
    """Whether a part ended without its whole answer: failed, or closed before it."""
    result = state.observer.result
    if failure is not None:
        return True
    return not result.complete and not result.answered(choices, usage)


async def _continue(
    state: _Relay,
    served: Served,
    continuation: Continuation,
    watcher: ClientWatch,
    out: bytes,
    failure: BaseException | None,
    ending: tuple[int, bool],
    closing_event: Callable[[UsageResult], bytes | None] | None,
) -> RelayOutcome:
    """End a relayed stream whose request may be continued: on a failure after it began, ask
    the continuation for another entry's stream and relay it into the same client stream, as
    often as a part fails and another entry can go on."""
    choices, usage = ending
    parts: list[StreamPart] = []
    attempts: list[Attempt] = []
    text = ""
    head: Relayed | None = None
    while (
        not state.gone
        and _failed(state, failure, choices, usage)
        and state.observer.result.error is None
        and isinstance(state, _Recording)
        and not state.misaligned
    ):
        relayed = relayed_text(state.pieces)
        if relayed is None:
            break
        if head is None:
            head = relayed
        ended = _why(failure, served.read_timeout)
        if out:  # the whole events not sent yet, before anything else
            await state.forward(out)
            out = b""
        watcher.on_gone = state.client_left
        try:
            continued, tried = await continuation.run(served.deployment, text + relayed.text)
        except asyncio.CancelledError:
            if not _left(state) or state.task is None:
                raise
            state.task.uncancel()  # the drain's deadline: the client left meanwhile
            continued, tried = None, []
        finally:
            watcher.on_gone = None
        attempts += tried
        if continued is None:
            break
        if _left(state):  # (while the continuation was asked for)
            await continued.aclose()
            break
        state.fail(b"")  # (the unfinished event held back is dropped)
        text += relayed.text
        parts.append(StreamPart(served.deployment, state.observer.result, ended))
        served = continued
        stall = continuation.stall(served.deployment)
        if stall < served.read_timeout:
            served.read_timeout = stall
        state = _Continued(state.send, state.strip_usage, state.drain_seconds, None, head)
        watcher.on_gone = state.client_left
        failure = None
        out = b""
        try:
            out = state.relay(served.prefix)
            while not served.at_end():
                if out:
                    await state.forward(out)
                    out = b""
                chunk = await served.read_chunk()
                if not chunk:
                    break
                out = state.relay(chunk)
        except (TimeoutError, UpstreamError) as exc:
            failure = exc
        except asyncio.CancelledError:
            if not state.gone or state.task is None:
                raise
            state.task.uncancel()
        finally:
            watcher.on_gone = None
            if state.drain is not None:
                state.drain.cancel()
            await served.aclose()
    whole = failure is None and state.observer.result.answered(choices, usage)
    outcome = await state.end(
        out, failure, None if parts else closing_event, whole, served.read_timeout
    )
    if parts:
        continued_on = f"continued on {served.deployment.key} after {parts[0].ended}"
        if outcome.status == "success":
            outcome.error = f"{continued_on}; {outcome.error}" if outcome.error else continued_on
    outcome.parts, outcome.attempts = parts, attempts
    if parts:
        outcome.deployment = served.deployment
    return outcome


def _left(state: _Relay) -> bool:
    """Whether the client has left (read anew: it may change during any await)."""
    return state.gone


def _why(failure: BaseException | None, timeout: float) -> str:
    """How a part ended, in the words of the record's ``error`` field."""
    if isinstance(failure, TimeoutError):
        return f"stream_stalled: no byte for {timeout:g}s"
    if isinstance(failure, UpstreamError):
        return f"stream_interrupted: {failure.name}"
    if failure is not None:
        return f"stream_interrupted: {type(failure).__name__}"
    return "no [DONE]"


def _gone(usage: UsageResult) -> RelayOutcome:
    return RelayOutcome("client_disconnected", usage, "client went away", client_gone=True)


def _code(error: dict[str, Any]) -> str:
    code = error.get("code") or error.get("type") or "unknown"
    return str(code)[:80]
