"""Deadline: asyncio.timeout()'s behaviour for a run of scopes, on one lazily moved timer.

Margins are wide (a scope that must time out waits 20-100× its timeout; one that must not has
seconds to spare), so these tests say what happens, never how fast.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from waterfall_asgi.deadline import Deadline

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Deadline is asyncio's (it cancels asyncio tasks)


class _Timers:
    """Counts the timers ``deadline`` sets, and keeps them (to see which were cancelled)."""

    def __init__(self, deadline: Deadline, monkeypatch: pytest.MonkeyPatch) -> None:
        loop = asyncio.get_running_loop()
        self.handles: list[asyncio.TimerHandle] = []
        real = loop.call_at

        def call_at(
            when: float, callback: Callable[..., Any], *args: Any, **kwargs: Any
        ) -> asyncio.TimerHandle:
            handle = real(when, callback, *args, **kwargs)
            if getattr(callback, "__self__", None) is deadline:  # (not the loop's own timers)
                self.handles.append(handle)
            return handle

        monkeypatch.setattr(loop, "call_at", call_at)


async def test_a_scope_that_outlives_its_deadline_raises_timeout_error() -> None:
    deadline = Deadline()
    with pytest.raises(TimeoutError):
        async with deadline.after(0.01):
            await asyncio.sleep(1)
    deadline.close()


async def test_a_plain_with_scope_behaves_as_the_async_one() -> None:
    deadline = Deadline()
    with pytest.raises(TimeoutError), deadline.after(0.01):
        await asyncio.sleep(1)
    with deadline.after(5):
        assert await asyncio.sleep(0, "in time") == "in time"
        with pytest.raises(RuntimeError, match="do not nest"):
            async with deadline.after(1):
                pass
    task = asyncio.current_task()
    assert task is not None

    async def cancelled_from_elsewhere() -> None:
        with deadline.after(5):
            task.cancel()
            await asyncio.sleep(1)

    with pytest.raises(asyncio.CancelledError):  # it stays a cancellation
        await cancelled_from_elsewhere()
    assert task.uncancel() == 0
    deadline.close()


async def test_a_scope_in_time_returns_what_it_awaited() -> None:
    deadline = Deadline()
    async with deadline.after(5):
        value = await asyncio.sleep(0.001, result="done")
    assert value == "done"
    deadline.close()


async def test_later_deadlines_reuse_one_timer_and_still_expire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deadline = Deadline()
    timers = _Timers(deadline, monkeypatch)
    for _ in range(50):  # each later than the last: only recorded
        async with deadline.after(5):
            await asyncio.sleep(0)
    assert len(timers.handles) == 1
    deadline.close()
    assert timers.handles[0].cancelled()
    # the timer fires before the recorded deadline: it sleeps again, and the scope still ends
    # by its own deadline, not the first one
    async with deadline.after(0.02):
        pass
    async with deadline.after(5):
        await asyncio.sleep(0.1)  # past the first timer: re-armed, not expired
    with pytest.raises(TimeoutError):
        async with deadline.after(0.01):  # earlier than the re-armed timer: re-armed again
            await asyncio.sleep(1)
    deadline.close()


async def test_an_earlier_deadline_rearms_the_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    deadline = Deadline()
    timers = _Timers(deadline, monkeypatch)
    async with deadline.after(30):
        pass
    with pytest.raises(TimeoutError):
        async with deadline.after(0.01):
            await asyncio.sleep(1)
    assert len(timers.handles) == 2
    assert timers.handles[0].cancelled()
    deadline.close()


async def test_nothing_is_cancelled_between_scopes() -> None:
    deadline = Deadline()
    async with deadline.after(0.01):
        pass
    await asyncio.sleep(0.1)  # the timer fires out here: no scope, no cancellation
    async with deadline.after(5):
        await asyncio.sleep(0.01)
    deadline.close()


async def test_an_await_that_does_not_suspend_is_not_cut_by_a_past_deadline() -> None:
    deadline = Deadline()
    loop = asyncio.get_running_loop()

    async def ready() -> str:
        return "ready"

    async with deadline.at(loop.time() - 1):
        value = await ready()
    assert value == "ready"
    await asyncio.sleep(0.01)  # the past-due timer fires between scopes: nothing happens
    deadline.close()


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    deadline = Deadline()
    entered = asyncio.Event()

    async def victim() -> None:
        async with deadline.after(5):
            entered.set()
            await asyncio.sleep(5)

    task = asyncio.ensure_future(victim())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline.close()


async def test_expiry_and_a_cancellation_from_elsewhere_together_stay_a_cancellation() -> None:
    deadline = Deadline()
    entered = asyncio.Event()

    async def victim() -> None:
        async with deadline.after(0.05):
            entered.set()
            await asyncio.sleep(5)

    task = asyncio.ensure_future(victim())
    await entered.wait()
    # someone else cancels the task in the same turn of the loop as the deadline passes
    asyncio.get_running_loop().call_at(deadline.when, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline.close()


async def test_each_scope_is_bound_to_the_task_that_enters_it() -> None:
    deadline = Deadline()

    async def one(seconds: float) -> str:
        try:
            async with deadline.after(seconds):
                await asyncio.sleep(0.5)
        except TimeoutError:
            return "timed out"
        return "in time"

    assert await asyncio.ensure_future(one(5)) == "in time"
    assert await asyncio.ensure_future(one(0.01)) == "timed out"
    deadline.close()


async def test_scopes_do_not_nest() -> None:
    deadline = Deadline()
    async with deadline.after(5):
        with pytest.raises(RuntimeError, match="nest"):
            async with deadline.after(1):
                pass  # pragma: no cover - never entered
    deadline.close()


async def test_close_drops_the_timer_and_a_new_scope_arms_one_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deadline = Deadline()
    timers = _Timers(deadline, monkeypatch)
    async with deadline.after(5):
        pass
    deadline.close()
    deadline.close()  # idempotent
    assert [h.cancelled() for h in timers.handles] == [True]
    with pytest.raises(TimeoutError):
        async with deadline.after(0.01):
            await asyncio.sleep(1)
    assert len(timers.handles) == 2
    deadline.close()


def test_a_deadline_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        Deadline()
