"""One timer for the many timeouts of one request: :class:`Deadline`.

``asyncio.timeout()`` schedules a timer each time it is entered and cancels it on the way out:
a push onto the event loop's heap and, later, a pop (both compare timers in Python). A proxy that
bounds every upstream read pays that on every read of every stream. A :class:`Deadline` keeps one
timer for a run of scopes, one after another, in one task, and moves it lazily:

- entering a scope with a *later* deadline than the timer's only records it; when the timer fires
  early, it sleeps again until the recorded deadline;
- only an *earlier* deadline re-arms the timer;
- outside a scope it cancels nothing (a timer that fires then is simply not re-armed until the
  next scope).

A scope that expires behaves as ``asyncio.timeout()``'s: the task is cancelled, and the
``CancelledError`` becomes ``TimeoutError`` at the scope's end, unless the task was also cancelled
from elsewhere (then the cancellation goes on). Entering and leaving a scope await nothing, so
a plain ``with`` works as well as ``async with``, without making two coroutines per scope.

>>> import asyncio
>>> async def main() -> str:
...     deadline = Deadline()
...     try:
...         async with deadline.after(0.01):
...             await asyncio.sleep(1)
...     except TimeoutError:
...         return "timed out"
...     finally:
...         deadline.close()
...     return "in time"
>>> asyncio.run(main())
'timed out'
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["Deadline"]


class Deadline:
    """Time-limited scopes for one task, one at a time, on one lazily moved timer.

    ``async with deadline.after(seconds):`` or ``async with deadline.at(when):`` (``when`` in
    the event loop's clock, :meth:`asyncio.loop.time`) bound what the scope awaits; ``with``
    does the same, a little cheaper. Call :meth:`close` when done: it drops the timer."""

    __slots__ = (
        "_active",
        "_cancelling",
        "_expired",
        "_handle",
        "_loop",
        "_task",
        "_when",
    )

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._when = 0.0
        self._active = self._expired = False
        self._cancelling = 0

    def at(self, when: float) -> Deadline:
        """This deadline, for a scope that must end by ``when`` (loop time)."""
        self._when = when
        return self

    def after(self, seconds: float) -> Deadline:
        """This deadline, for a scope that must end within ``seconds`` from now."""
        self._when = self._loop.time() + seconds
        return self

    @property
    def when(self) -> float:
        """The deadline last given by :meth:`at` or :meth:`after`, in loop time."""
        return self._when

    async def __aenter__(self) -> Deadline:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __enter__(self) -> Deadline:
        if self._active:
            raise RuntimeError("Deadline scopes do not nest")
        task = asyncio.current_task(self._loop)  # (with no loop given: a getpid() call)
        if task is None:
            raise RuntimeError("Deadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        when = self._when
        self._active, self._expired = True, False
        handle = self._handle
        if handle is None or handle.when() > when:  # none yet, or one that would fire too late
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(when, self._fire)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._active = False
        if self._expired:
            self._expired = False
            assert self._task is not None
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc  # no other cancellation: this one is ours

    def _fire(self) -> None:
        self._handle = None
        if not self._active:
            return  # between scopes: the next scope arms a timer again
        if self._when > self._loop.time():  # moved later since the timer was set
            self._handle = self._loop.call_at(self._when, self._fire)
            return
        self._expired = True
        assert self._task is not None
        self._task.cancel()

    def close(self) -> None:
        """Drop the timer (the scopes are over; a new scope would arm it again)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
