"""One contract for every cooldown store: the same tests run on the in-memory and the Redis
store, and a Hypothesis state machine compares each with a plain model (a dict of maxima)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from waterfall_asgi import CooldownStore, InMemoryCooldownStore, RedisCooldownStore

KEYS = ["a/m", "b/m", "c/x/y", "d/ü*?[x]"]  # a glob-like, non-ASCII one too
Factory = Callable[[str], AbstractAsyncContextManager[CooldownStore]]


@pytest.fixture(params=["memory", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(kind: str, request: pytest.FixtureRequest) -> Factory:
    """Opens a store of ``kind`` (a Redis one under this test's fresh prefix, then the
    ``namespace`` given), and closes it after."""
    if kind == "memory":

        @asynccontextmanager
        async def memory(namespace: str = "") -> AsyncIterator[CooldownStore]:
            yield InMemoryCooldownStore()

        return memory
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")

    @asynccontextmanager
    async def shared(namespace: str = "") -> AsyncIterator[CooldownStore]:
        store = RedisCooldownStore(url, prefix=prefix + namespace, timeout=2.0, connect_timeout=2.0)
        await store.open()
        assert store.connected, store.health()
        try:
            yield store
        finally:
            await store.close()

    return shared


@pytest.mark.anyio
async def test_satisfies_the_protocol(make_store: Factory) -> None:
    async with make_store() as store:
        assert isinstance(store, CooldownStore)


@pytest.mark.anyio
async def test_extend_get_and_snapshot(make_store: Factory) -> None:
    now = time.time()
    async with make_store() as store:
        assert await store.get("a/m") is None
        assert await store.snapshot() == {}
        assert await store.extend("a/m", now + 10) == now + 10
        assert await store.extend("a/m", now + 5) == now + 10  # never shortened
        assert await store.extend("a/m", now + 10) == now + 10
        assert await store.extend("b/m", now + 1) == now + 1
        assert await store.extend("a/m", now + 20) == now + 20
        assert await store.get("a/m") == now + 20
        snap = await store.snapshot()
        assert snap == {"a/m": now + 20, "b/m": now + 1}
        snap["a/m"] = 0.0  # a copy: changing it changes nothing
        snap["c/m"] = 1.0
        await store.extend("b/m", now + 30)
        assert snap["b/m"] == now + 1
        assert await store.snapshot() == {"a/m": now + 20, "b/m": now + 30}
        assert await store.get("c/m") is None


@pytest.mark.anyio
async def test_a_deadline_in_the_past_is_kept_like_any_other(make_store: Factory) -> None:
    now = time.time()
    async with make_store() as store:
        assert await store.extend("a/m", now - 5) == now - 5
        assert await store.get("a/m") == now - 5
        assert await store.extend("a/m", now - 9) == now - 5
        assert await store.extend("a/m", now + 9) == now + 9


@pytest.mark.anyio
async def test_many_concurrent_extends_end_at_the_maximum(make_store: Factory) -> None:
    now = time.time()
    rng = random.Random(25)
    wanted = {key: [now + rng.uniform(1, 600) for _ in range(50)] for key in KEYS}
    async with make_store() as store:
        calls = [store.extend(k, u) for k, values in wanted.items() for u in values]
        rng.shuffle(calls)
        returned = await asyncio.gather(*calls)
        assert len(returned) == 50 * len(KEYS)
        for key, values in wanted.items():
            assert await store.get(key) == max(values)
        assert await store.snapshot() == {k: max(v) for k, v in wanted.items()}


# -- the state machine --------------------------------------------------------------------------
class StoreMachine(RuleBasedStateMachine):
    """Any sequence of extends, reads and (for a shared store) reconnections agrees with a dict of
    maxima, exactly; and a replica that starts later sees the same deadlines (within a
    millisecond: it converts them through its own measurement of Redis's clock)."""

    factory: Factory
    shared: bool

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.namespace = f"{uuid.uuid4().hex[:8]}:"  # each run a fresh one
        self.stack: list[AbstractAsyncContextManager[CooldownStore]] = []
        self.store = self.open()
        self.model: dict[str, float] = {}
        self.now = time.time()

    def open(self) -> CooldownStore:
        manager = self.factory(self.namespace)
        self.stack.append(manager)
        return self.runner.run(manager.__aenter__())

    def run(self, coroutine: Any) -> Any:
        return self.runner.run(coroutine)

    @rule(key=st.sampled_from(KEYS), delta=st.floats(-100, 86_400, allow_nan=False))
    def extend(self, key: str, delta: float) -> None:
        until = self.now + delta
        self.model[key] = max(self.model.get(key, until), until)
        assert self.run(self.store.extend(key, until)) == self.model[key]

    @rule(key=st.sampled_from(KEYS))
    def get(self, key: str) -> None:
        assert self.run(self.store.get(key)) == self.model.get(key)

    @precondition(lambda self: self.shared)
    @rule()
    def reconnect(self) -> None:
        store = self.store
        assert isinstance(store, RedisCooldownStore)
        resyncs = store.resyncs

        async def again() -> None:
            await store.resync()
            for _ in range(1000):  # bounded: at most ~10 s
                if store.resyncs > resyncs and store.connected:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"no resync: {store.health()}")

        self.run(again())

    @precondition(lambda self: self.shared)
    @rule()
    def a_new_replica_agrees(self) -> None:
        other = self.open()
        try:
            seen = self.run(other.snapshot())
            live = {k: v for k, v in self.model.items() if v > time.time() + 0.5}
            assert set(live) <= set(seen)
            for key, until in live.items():
                assert seen[key] == pytest.approx(until, abs=0.05)
        finally:
            self.run(self.stack.pop().__aexit__(None, None, None))

    @invariant()
    def snapshot_is_the_model(self) -> None:
        assert self.run(self.store.snapshot()) == self.model

    def teardown(self) -> None:
        try:
            while self.stack:
                self.run(self.stack.pop().__aexit__(None, None, None))
        finally:
            self.runner.close()


def test_state_machine(make_store: Factory, kind: str) -> None:
    machine = type(f"StoreMachine_{kind}", (StoreMachine,), {"factory": staticmethod(make_store)})
    machine.shared = kind == "redis"
    state_test = machine.TestCase
    # Each Redis run opens connections and reconnects: fewer runs than the profile's, still
    # hundreds of steps against a real server.
    runs = settings().max_examples if kind == "memory" else min(settings().max_examples, 60)
    state_test.settings = settings(max_examples=runs, stateful_step_count=25)
    state_test().runTest()
