"""``RedisCooldownStore``: cooldowns shared by every replica through one Redis server.

Needs the ``redis`` extra (``pip install 'waterfall-asgi[redis]'``: redis-py's asyncio client).
The store behaves as :class:`~waterfall_asgi.cooldown.InMemoryCooldownStore` does in one process
(a deadline only ever grows), made atomic across replicas. Where it differs from the obvious
implementation, and why:

- **No request waits for Redis.** Each replica keeps a local mirror of every deadline: ``get``
  reads it, and ``extend`` writes it and wakes a background writer. So a request where nothing
  is cooling makes no Redis round trip, and a request that records a cooldown does not wait for
  one either.
- **One atomic round trip per write.** The writer sends every waiting deadline in one pipeline;
  for each, a Lua script keeps the later of the stored and the new deadline, sets the key to
  expire with its cooldown, and publishes the new deadline on ``{prefix}events``, atomically.
  Every replica is subscribed and updates its mirror as the message arrives (about a millisecond
  on loopback). On every (re)connect a replica subscribes first, then reads every key under the
  prefix (a full resync), so nothing published in between is lost.
- **Deadlines are in the Redis server's clock.** Each replica measures the offset between its
  own clock and Redis's (Redis's ``TIME`` against the midpoint of the round trip, keeping the
  sample with the shortest round trip of the last eight) and converts deadlines to Redis's clock
  when it writes them and back when it reads them. Hosts whose clocks disagree by minutes still
  agree on when a cooldown ends, to within half a round trip.
- **Redis being away never fails a request.** Every Redis call is bounded (writes by
  ``timeout``; connecting, resyncing and the heartbeat by ``connect_timeout``), with no retries
  inside redis-py. When Redis fails the store turns *degraded*: it logs one warning (the URL with
  its password redacted), keeps serving from its mirror and records new cooldowns locally, while
  a background task reconnects with a capped backoff. When Redis answers again it pushes the
  cooldowns recorded meanwhile (and any that a restarted, empty Redis lost), resyncs, and logs
  that it is back. A heartbeat (``TIME`` every ``heartbeat`` seconds) notices a Redis that hangs;
  a write that misses ``timeout`` is tried again after Redis has answered a ``TIME`` (a host
  short of CPU is not an outage), and three slow writes in a row are one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .redact import redact_url, url_secrets

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

__all__ = ["RedisCooldownStore"]

logger = logging.getLogger("waterfall_asgi.cooldowns")

# KEYS[1]: the key; ARGV: the deadline (µs, Redis's clock), this replica's id, the channel, the
# entry key. Returns {the key's deadline, 1 if this call set it else 0, Redis's now (µs)}.
_EXTEND = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local want = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if current >= want or want <= now then
  return {current, 0, now}
end
local text = string.format('%.0f', want)
redis.call('SET', KEYS[1], text, 'PX', math.ceil((want - now) / 1000))
redis.call('PUBLISH', ARGV[3], ARGV[2] .. '\\n' .. text .. '\\n' .. ARGV[4])
return {want, 1, now}
"""

_MICRO = 1_000_000
_EPSILON = 0.001  # seconds: a deadline read from Redis this close to the known one is the same
_SAMPLES = 8  # clock-offset samples kept; the one with the shortest round trip wins
_GLOB = re.compile(r"([*?\[\]\\])")


class RedisCooldownStore:
    """Cooldown deadlines shared through Redis, read from a local mirror (see the module).

    ``url`` is a redis-py URL (``redis://``, ``rediss://``, ``unix://``); ``prefix`` namespaces
    the keys (``{prefix}{provider/model}``) and the channel (``{prefix}events``); ``clock`` is the
    router's wall clock. Call :meth:`open` before use and :meth:`close` after (the middleware does
    both with lifespan); until it is open the store keeps cooldowns locally.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "waterfall:cooldown:",
        timeout: float = 0.05,
        connect_timeout: float = 0.25,
        heartbeat: float = 1.0,
        max_backoff: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if timeout <= 0 or connect_timeout <= 0 or heartbeat <= 0 or max_backoff <= 0:
            raise ValueError("timeouts, heartbeat and backoff must be positive")
        self._url = url
        self._secrets = url_secrets(url)
        self.url = redact_url(url)
        """The URL with its password redacted: safe to show."""
        self.prefix = prefix
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.heartbeat = heartbeat
        self.max_backoff = max_backoff
        self.clock = clock
        self.channel = f"{prefix}events"
        self._origin = uuid.uuid4().hex
        self._mirror: dict[str, float] = {}  # entry key -> deadline, in the local clock
        self._server: dict[str, int] = {}  # entry key -> the deadline Redis holds, in µs
        self._pending: set[str] = set()  # recorded here, not yet in Redis: to send
        self._samples: deque[tuple[float, float]] = deque(maxlen=_SAMPLES)  # (rtt, offset)
        self._offset = 0.0  # Redis's clock minus ours, in seconds
        self._client: Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._broken: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None  # set when there is something to send
        self._in_flight: list[str] = []
        self._sha = ""
        self._first: asyncio.Event | None = None
        self._up = False
        self._asked = False  # resync() was called
        self._closing = False
        self._down_since: float | None = time.monotonic()
        self._error: str | None = "not opened"
        self._warned = False
        self.outages = 0
        """How many times Redis went away after the store was open (the first failure to
        connect counts too)."""
        self.resyncs = 0
        """How many times the mirror was read whole from Redis (each successful connect)."""

    def __repr__(self) -> str:
        return f"RedisCooldownStore({self.url!r}, prefix={self.prefix!r})"

    # -- the protocol --------------------------------------------------------------------------
    async def get(self, key: str) -> float | None:
        """The deadline of ``key``'s cooldown, from the mirror (no Redis round trip)."""
        return self._mirror.get(key)

    async def extend(self, key: str, until: float) -> float:
        """Make ``key`` cool until at least ``until`` here at once, and on every replica as soon
        as the background writer has sent it (one round trip for all the keys waiting; none
        when this replica already knows a deadline at least as late, or when ``until`` has
        passed). Never waits for Redis; while Redis is away the cooldown is kept here and sent
        when it returns. Returns the deadline this replica knows."""
        current = self._mirror.get(key)
        if current is not None and current >= until:
            return current
        self._mirror[key] = until
        if until > self.clock():  # (a deadline already passed is nothing to share)
            self._pending.add(key)
            if self._wake is not None:
                self._wake.set()
        return until

    async def snapshot(self) -> dict[str, float]:
        """A copy of every deadline this replica knows (expired ones included)."""
        return dict(self._mirror)

    # -- what the router and /health see -------------------------------------------------------
    @property
    def connected(self) -> bool:
        """Whether cooldowns are being shared right now."""
        return self._up

    def health(self) -> dict[str, Any]:
        """The store's state for ``/health``: nothing secret (the URL is redacted)."""
        state: dict[str, Any] = {
            "store": "redis",
            "state": "ok" if self._up else "degraded",
            "url": self.url,
            "prefix": self.prefix,
        }
        if not self._up:
            since = self._down_since
            state["degraded_for_s"] = round(time.monotonic() - since, 3) if since else None
            state["error"] = self._error
            state["local_cooldowns"] = len(self._pending)
        return state

    # -- lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect, subscribe and read every deadline; return within ``3 × connect_timeout``
        even when Redis is down or hangs (the store then starts degraded and keeps trying in the
        background)."""
        if self._task is not None:
            return
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._client = Redis.from_url(
            self._url,
            socket_timeout=max(self.timeout, self.connect_timeout),
            socket_connect_timeout=self.connect_timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
        )
        self._broken = asyncio.Event()
        self._first = asyncio.Event()
        self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3 * self.connect_timeout):
                await self._first.wait()

    async def close(self) -> None:
        """Stop the background task and close the connections."""
        if self._task is not None and self._up:
            await self.flush()
        task, self._task = self._task, None
        if task is not None:
            self._closing = True
            if self._broken is not None:
                self._broken.set()
            # Python 3.11's wait_for (inside redis-py) can swallow a cancellation that lands as
            # its inner call finishes: cancel until the task has really ended.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
            self._closing = False
        self._up = False
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.connect_timeout):
                    await client.aclose()

    async def flush(self, within: float | None = None) -> bool:
        """Wait until every cooldown recorded here has reached Redis: ``True``; ``False`` when
        Redis is away or ``within`` seconds (default: 4 × ``connect_timeout``) pass first."""
        limit = time.monotonic() + (4 * self.connect_timeout if within is None else within)
        while self._pending or self._in_flight:
            if not self._up or time.monotonic() > limit:
                return False
            await asyncio.sleep(0.001)
        return True

    async def resync(self) -> None:
        """Drop the connection and sync again, as after an outage (for tests and operators)."""
        if self._broken is not None:
            self._asked = True
            self._broken.set()

    # -- the background task -------------------------------------------------------------------
    async def _run(self) -> None:
        initial = min(0.05, self.max_backoff)
        backoff = initial
        while not self._closing:
            assert self._broken is not None
            assert self._first is not None
            self._broken.clear()
            resyncs = self.resyncs
            self._asked = False
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
            self._up = False  # (broken by a failed call, already reported, or by resync())
            self._first.set()
            if self._asked:  # resync(): at once
                continue
            if self.resyncs != resyncs:  # it was up: try again soon
                backoff = initial
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _session(self) -> None:
        """One connection's life: subscribe, resync, then listen and beat until it breaks."""
        assert self._client is not None
        assert self._broken is not None
        pubsub: PubSub = self._client.pubsub()
        try:
            async with asyncio.timeout(self.connect_timeout + 2 * self.timeout):
                await pubsub.subscribe(self.channel)
            await self._resync()
            listening = asyncio.ensure_future(self._listen(pubsub))
            beating = asyncio.ensure_future(self._beat())
            writing = asyncio.ensure_future(self._write())
            broken = asyncio.ensure_future(self._broken.wait())
            tasks = {listening, beating, writing, broken}
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                if task is not broken and (exc := task.exception()) is not None:
                    raise exc
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _listen(self, pubsub: PubSub) -> None:
        async for message in pubsub.listen():
            if message.get("type") == "message":
                self._apply_message(message["data"])
        raise ConnectionError("the subscription ended")  # pragma: no cover - listen never ends

    async def _write(self) -> None:
        assert self._wake is not None
        slow = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._push_pending(self.timeout)
            except TimeoutError:
                # Slow, or gone? A host short of CPU can miss ``timeout`` while Redis is fine:
                # ask Redis the time (within ``connect_timeout``; failing that, the session
                # breaks) and try again; three slow writes in a row are an outage all the same.
                slow += 1
                if slow >= 3:
                    raise
                await self._sample_offset()
                self._wake.set()
            else:
                slow = 0

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            # a heartbeat may take up to a heartbeat: a busy event loop is not a Redis outage
            await self._sample_offset(max(self.connect_timeout, self.heartbeat))

    async def _sample_offset(self, within: float | None = None) -> None:
        assert self._client is not None
        before = self.clock()
        async with asyncio.timeout(within or self.connect_timeout):
            seconds, micros = await self._client.time()
        self._sample(before, self.clock(), seconds * _MICRO + micros)

    def _sample(self, before: float, after: float, server_now: int) -> None:
        self._samples.append((after - before, server_now / _MICRO - (before + after) / 2))
        self._offset = min(self._samples)[1]

    async def _resync(self) -> None:
        """Measure the clock offset, read every key, push what Redis lacks, and go up."""
        assert self._client is not None
        for _ in range(3):
            await self._sample_offset()
        async with asyncio.timeout(self.connect_timeout):
            self._sha = await self._client.script_load(_EXTEND)  # (a restarted Redis lost it)
        pattern = _GLOB.sub(r"\\\1", self.prefix) + "*"
        names: list[Any] = []
        async with asyncio.timeout(self.connect_timeout + 4 * self.timeout):
            cursor = 0
            while True:
                cursor, batch = await self._client.scan(cursor, match=pattern, count=1000)
                names += batch
                if not cursor:
                    break
            values = await self._client.mget(names) if names else []
        start = len(self.prefix.encode())
        seen: dict[str, int] = {}
        for name, value in zip(names, values, strict=True):
            if value is None:
                continue  # expired between the scan and the read
            try:
                seen[name[start:].decode()] = int(value)
            except (UnicodeDecodeError, ValueError):
                continue  # not one of ours
        for key, deadline in seen.items():
            self._learn(key, deadline)
        # Redis lacks what was recorded here while it was away, and what a restarted (empty)
        # Redis lost; both are pushed now, with the usual max-merge.
        lost = {k for k, at in self._server.items() if seen.get(k, 0) < at}
        self._pending |= lost & set(self._mirror)
        pushed = await self._push_pending(self.connect_timeout)
        self._up = True
        self.resyncs += 1
        self._recovered(len(seen), pushed)
        assert self._first is not None
        self._first.set()

    async def _push_pending(self, within: float) -> int:
        """Send every waiting deadline in one pipelined round trip, within ``within`` s; return
        how many were sent. On failure they wait again (and the caller's session breaks)."""
        assert self._client is not None
        now = self.clock()
        keys = [k for k in self._pending if self._mirror[k] > now]
        self._pending.clear()
        if not keys:
            return 0
        self._in_flight = keys
        try:
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                want = math.ceil((self._mirror[key] + self._offset) * _MICRO)
                pipe.evalsha(self._sha, 1, self.prefix + key, want, self._origin, self.channel, key)
            async with asyncio.timeout(within):
                results = await pipe.execute()
        except BaseException:
            self._pending.update(keys)
            raise
        finally:
            self._in_flight = []
        for key, (deadline, mine, _now) in zip(keys, results, strict=True):
            if mine:
                self._server[key] = int(deadline)  # ours: the mirror keeps ``until`` exactly
            else:
                self._learn(key, int(deadline))
        return len(keys)

    def _learn(self, key: str, deadline: int) -> None:
        """Merge a deadline Redis holds (µs, its clock) into the mirror: never shortened."""
        if self._server.get(key) == deadline:
            return  # known already (our own write, or read before): keep the exact local value
        self._server[key] = max(deadline, self._server.get(key, 0))
        local = deadline / _MICRO - self._offset
        current = self._mirror.get(key)
        if current is None or local > current + _EPSILON:
            self._mirror[key] = local

    def _apply_message(self, data: bytes) -> None:
        try:
            origin, deadline, key = data.decode().split("\n", 2)
            value = int(deadline)
        except (UnicodeDecodeError, ValueError):
            return  # not one of ours
        if origin != self._origin:
            self._learn(key, value)

    # -- outages -------------------------------------------------------------------------------
    def _failed(self, exc: BaseException) -> None:
        """Redis did not answer: go local, warn once per outage, and reconnect."""
        if self._broken is not None:
            self._broken.set()
        was_up, self._up = self._up, False
        self._error = type(exc).__name__
        if was_up or not self._warned:
            self.outages += 1
            self._down_since = time.monotonic()
        if not self._warned:
            self._warned = True
            logger.warning(
                "cooldowns: Redis at %s is unavailable (%s); cooldowns are kept locally until "
                "it returns",
                self.url,
                self._scrub(exc),
            )

    def _recovered(self, keys: int, pushed: int) -> None:
        since, self._down_since = self._down_since, None
        self._error = None
        if self._warned:
            self._warned = False
            away = f" after {time.monotonic() - since:.1f} s" if since else ""
            logger.info(
                "cooldowns: Redis at %s is back%s: %d deadline(s) read, %d pushed",
                self.url,
                away,
                keys,
                pushed,
            )

    def _scrub(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text
