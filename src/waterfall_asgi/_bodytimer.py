"""One timer for the request bodies being read: :class:`BodyTimer`.

``asyncio.timeout()`` per request costs a timer on the event loop's heap for every request,
though almost every body has arrived by the first read. Every body here gets the same time
(``limits.body_timeout``), so the deadlines fall in the order the reads start: one timer handle
waits for the oldest deadline, cancels the reads past theirs, and is set again for the next
oldest. Starting and ending a read is a dict insert and delete (and, when no timer is set, one
timer is set: it is never cancelled, only left to fire on nothing).
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["BodyTimer"]


class BodyTimer:
    """Cancels the tasks still reading a body ``seconds`` after they started.

    A read is bracketed by :meth:`start` and :meth:`stop` with no await between the end of the
    read and :meth:`stop`; a ``CancelledError`` in between is this timer's when :meth:`stop`
    says so (then ``task.uncancel()`` is the caller's).
    """

    __slots__ = ("_expired", "_handle", "_loop", "_reading", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._reading: dict[asyncio.Task[Any], float] = {}  # in deadline order
        self._expired: set[asyncio.Task[Any]] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> asyncio.Task[Any]:
        """The current task starts reading a body; returns it (for :meth:`stop`)."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        if loop is not self._loop:  # (a new event loop: nothing carried over)
            self._loop, self._handle = loop, None
            self._reading.clear()
            self._expired.clear()
        when = loop.time() + self.seconds
        self._reading[task] = when
        if self._handle is None:
            self._handle = loop.call_at(when, self._fire)
        return task

    def stop(self, task: asyncio.Task[Any]) -> bool:
        """The read of ``task`` is over; whether this timer cancelled it."""
        self._reading.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def _fire(self) -> None:
        self._handle = None
        loop = self._loop
        assert loop is not None
        reading = self._reading
        now = loop.time()
        while reading:
            task, when = next(iter(reading.items()))
            if when > now:
                self._handle = loop.call_at(when, self._fire)
                return
            del reading[task]
            self._expired.add(task)
            task.cancel()
