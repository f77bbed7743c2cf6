"""The disconnect watch, started late: ``WatchStarter`` starts a request's ``ClientWatch`` only
once the request has run for ``delay`` to ``2 * delay`` seconds, and never after it ended.

The schedule is checked against a model by driving the starter's runs by hand (``_run``, what
its timer calls), so no test depends on how fast this machine is."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waterfall_asgi import ClientWatch, WatchStarter

Message = MutableMapping[str, Any]


class Client:
    """A ``receive`` that counts its calls and says ``http.disconnect`` once told to."""

    def __init__(self) -> None:
        self.calls = 0
        self.left = asyncio.Event()

    async def receive(self) -> Message:
        self.calls += 1
        await self.left.wait()
        return {"type": "http.disconnect"}


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


OPS = st.lists(
    st.one_of(
        st.just(("add", 0)),
        st.just(("run", 0)),
        st.tuples(st.just("close"), st.integers(0, 30)),
    ),
    max_size=60,
)


@given(OPS)
def test_a_watch_starts_on_the_second_run_after_it_was_made_unless_closed(
    ops: list[tuple[str, int]],
) -> None:
    async def scenario() -> None:
        starter = WatchStarter(delay=3600)  # its own timer never fires here: runs are by hand
        watches: list[tuple[ClientWatch, Client]] = []
        made_at: list[int] = []  # the runs done when each watch was made
        closed: list[int | None] = []  # the runs done when it was closed
        runs = 0
        for op, index in ops:
            if op == "add":
                client = Client()
                watches.append((starter.watch(client.receive), client))
                made_at.append(runs)
                closed.append(None)
            elif op == "close" and index < len(watches):
                watches[index][0].close()
                if closed[index] is None:
                    closed[index] = runs
            elif op == "run":
                starter._run()
                runs += 1
            await settle()
            for i, (watch, client) in enumerate(watches):
                # started by the second run after it was made, if it was open then
                end = runs if closed[i] is None else closed[i]
                assert watch.listening == (end - made_at[i] >= 2), (i, made_at, closed, runs)
                assert client.calls == (1 if watch.listening else 0)
        expected = sum(1 for i, c in enumerate(closed) if c is None and runs - made_at[i] < 2)
        assert starter.waiting == expected
        starter.close()
        assert starter.waiting == 0

    asyncio.run(scenario())


@pytest.mark.anyio
async def test_a_late_watch_still_hears_a_client_that_left_before_it_started() -> None:
    starter = WatchStarter(delay=3600)
    client = Client()
    heard: list[str] = []
    watch = starter.watch(client.receive, lambda: heard.append("gone"))
    client.left.set()  # before anyone listens
    await settle()
    assert (watch.gone, heard) == (False, [])
    starter._run()
    starter._run()
    await settle()
    assert watch.gone
    assert heard == ["gone"]
    watch.close()


@pytest.mark.anyio
async def test_its_own_timer_starts_a_watch_and_stops_when_none_waits() -> None:
    starter = WatchStarter(delay=0.001)
    client = Client()
    watch = starter.watch(client.receive)
    assert not watch.listening  # never at once
    for _ in range(1000):  # until the timer has run twice (bounded: about a second at most)
        if watch.listening:
            break
        await asyncio.sleep(0.001)
    assert watch.listening
    assert starter.waiting == 0
    assert starter._handle is None  # nothing waits: no timer
    client.left.set()
    await settle()
    assert watch.gone
    watch.close()


@pytest.mark.anyio
async def test_closing_the_starter_forgets_its_watches() -> None:
    starter = WatchStarter(delay=3600)
    client = Client()
    watch = starter.watch(client.receive)
    starter.close()
    starter._run()
    starter._run()
    await settle()
    assert (watch.listening, client.calls, starter.waiting) == (False, 0, 0)
    watch.close()  # (after the starter's close: nothing left to forget)


def test_watches_of_an_earlier_event_loop_are_dropped_by_a_new_one() -> None:
    starter = WatchStarter(delay=3600)
    first = Client()

    async def make() -> ClientWatch:
        return starter.watch(first.receive)

    old = asyncio.run(make())
    assert starter.waiting == 1

    async def again() -> None:
        watch = starter.watch(Client().receive)
        assert starter.waiting == 1  # this loop's only
        starter._run()
        starter._run()
        await settle()
        assert watch.listening
        watch.close()
        starter.close()

    asyncio.run(again())
    assert not old.listening
    assert first.calls == 0


def test_the_delay_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        WatchStarter(delay=0)


@pytest.mark.anyio
async def test_a_watch_made_to_start_at_once_listens_at_once() -> None:
    client = Client()
    watch = ClientWatch(client.receive)
    assert watch.listening
    await settle()
    assert client.calls == 1
    watch.close()
    await settle()
    watch.start()  # closed: never again
    assert client.calls == 1


@pytest.mark.anyio
async def test_a_watch_started_by_hand_no_longer_waits_on_its_starter() -> None:
    starter = WatchStarter(delay=3600)
    client = Client()
    watch = starter.watch(client.receive)
    watch.start()
    await settle()
    assert (watch.listening, client.calls, starter.waiting) == (True, 1, 0)
    watch.close()
    starter.close()
