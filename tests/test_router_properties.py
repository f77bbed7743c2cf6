"""Properties of the waterfall over random chains, faults, cooldowns and a controllable clock.

An oracle says what must happen for each random chain: the request is served by the first entry
that is neither cooling nor failing (a transient failure is retried once on the same entry, whose
script then answers); a 4xx that is the request's own fault comes back as it is; 503 exactly when
no entry can serve, with ``Retry-After`` equal to the soonest recovery (at least 1); no call is
ever made to a cooling entry; only a provider's instruction (a 429, a 402) cools an entry;
cooldowns never shrink; and for streams nothing reaches the client before an upstream is accepted.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import pytest
from asgi_helpers import call
from hypothesis import given
from hypothesis import strategies as st

from waterfall_asgi._requests import client_headers
from waterfall_asgi.config import Limits
from waterfall_asgi.middleware import WaterfallMiddleware
from waterfall_asgi.router import _NOT_FORWARDED, forwarded_headers
from waterfall_fakes import FakeNetwork, FakeProvider

NOW = 1_800_000_000.0
DEFAULT_COOLDOWN = 30.0
MAX_COOLDOWN = 600.0
DIALECTS = ["retry-after", "retry-after-date", "retry-after-ms", "openai", "openrouter", "none"]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Entry:
    behaviour: str  # header-syntax behaviour for the entry's one request, or "down"
    cooling: float | None  # seconds of cooldown left before the request, or None


def hint(behaviour: str) -> float | None:
    """The cooldown the router must take from a failing behaviour (None: the default)."""
    if not behaviour.startswith("rate_limit"):
        return None
    params = dict(p.split("=") for p in behaviour.partition(":")[2].split(","))
    seconds, dialect = float(params["seconds"]), params["dialect"]
    if dialect in ("retry-after", "retry-after-date"):
        return float(math.ceil(seconds))
    if dialect == "none":
        return None
    return math.ceil(seconds * 1000) / 1000


def outcome(behaviour: str, stream: bool) -> str:
    """``served``, ``rejected`` (back to the client), ``instruction`` (cools the entry),
    ``transient`` (retried on the same entry) or ``failed`` (falls through, cools nothing)."""
    if behaviour == "ok":
        return "served"
    if behaviour in ("status:code=400", "status:code=422", "status:code=404"):
        return "rejected"
    if behaviour.startswith("rate_limit") or behaviour in (
        "status:code=402",
        "insufficient_balance",
    ):
        return "instruction"
    if behaviour in ("status:code=401", "status:code=403"):
        return "failed"
    return "transient"


quarter_seconds = st.integers(min_value=1, max_value=2400).map(lambda k: k / 4)
rate_limits = st.builds(
    lambda d, s: f"rate_limit:dialect={d},seconds={s}", st.sampled_from(DIALECTS), quarter_seconds
)
common = st.one_of(
    st.just("ok"),
    rate_limits,
    st.sampled_from(
        [
            "status:code=500",
            "status:code=502",
            "status:code=503",
            "status:code=504",
            "status:code=401",
            "status:code=403",
            "status:code=402",
            "status:code=408",
            "insufficient_balance",
            "status:code=400",
            "status:code=422",
            "status:code=404",
            "down",
        ]
    ),
)
stream_only = st.sampled_from(["truncate:events=0", "error_event:after=0", "cut:bytes=5"])


@st.composite
def chains(draw: st.DrawFn, stream: bool) -> list[Entry]:
    behaviours = st.one_of(common, stream_only) if stream else common
    entries = st.builds(Entry, behaviours, st.none() | quarter_seconds)
    return draw(st.lists(entries, min_size=1, max_size=5))


def build(
    chain: list[Entry], clock: Clock, scripts: list[list[str]] | None = None
) -> tuple[WaterfallMiddleware, FakeNetwork]:
    """A router over one fake per entry; each fake's script is its entry's behaviour (or
    ``scripts``)."""
    hosts = [f"p{i}" for i in range(len(chain))]
    if scripts is None:
        scripts = [[] if e.behaviour == "down" else [e.behaviour] for e in chain]
    net = FakeNetwork(
        {
            h: FakeProvider(name=h, clock=clock, script=script)
            for h, script in zip(hosts, scripts, strict=True)
        }
    )
    net.down.update(h for h, e in zip(hosts, chain, strict=True) if e.behaviour == "down")
    config: dict[str, Any] = {
        "providers": {
            h: {"base_url": f"http://{h}/v1", "timeouts": {"first_byte": 1, "read": 1}}
            for h in hosts
        },
        "chains": {"c": [f"{h}/fake-small" for h in hosts]},
        "policy": {
            "default_cooldown": DEFAULT_COOLDOWN,
            "max_cooldown": MAX_COOLDOWN,
            "backoff": 0.001,
        },
    }
    return WaterfallMiddleware(None, config, transport=net, clock=clock), net


async def check_one_request(chain: list[Entry], stream: bool) -> None:
    clock = Clock()
    app, net = build(chain, clock)
    for i, entry in enumerate(chain):
        if entry.cooling is not None:
            await app.cooldowns.extend(f"p{i}/fake-small", NOW + entry.cooling)
    before = await app.cooldowns.snapshot()
    payload = {"model": "c", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    result = await call(app, "POST", "/v1/chat/completions", payload)

    # the oracle
    expected_calls = [0] * len(chain)
    deadlines: dict[int, float] = {}
    ready: list[float] = []  # when each entry may be called again, for Retry-After
    winner: tuple[int, str] | None = None
    made = 0  # upstream calls, within the request's budget (8 by default)
    for i, entry in enumerate(chain):
        if entry.cooling is not None:
            deadlines[i] = NOW + entry.cooling
            ready.append(deadlines[i])
            continue
        if made >= 8:
            break
        kind = outcome(entry.behaviour, stream)
        made += 1
        expected_calls[i] = 0 if entry.behaviour == "down" else 1
        if kind == "transient" and made < 8:  # retried: the script has run out, so it answers
            made += 1
            if entry.behaviour != "down":
                expected_calls[i] = 2
                winner = (i, "served")
                break
        if kind in ("served", "rejected"):
            winner = (i, kind)
            break
        if kind == "instruction":
            seconds = hint(entry.behaviour)
            seconds = min(DEFAULT_COOLDOWN if seconds is None else seconds, MAX_COOLDOWN)
            deadlines[i] = NOW + seconds
            ready.append(deadlines[i])
        else:
            ready.append(NOW)  # evidence only: not cooled

    calls = [len(net[f"p{i}"].calls()) for i in range(len(chain))]
    assert calls == expected_calls  # in particular: no call to a cooling entry
    starts = [m for m in result.messages if m["type"] == "http.response.start"]
    assert len(starts) == 1
    assert result.messages[0]["type"] == "http.response.start"  # nothing before acceptance
    if winner is None:
        assert result.status == 503
        assert result.json()["error"]["code"] == "all_providers_exhausted"
        soonest = min(
            ready + [NOW + entry.cooling for entry in chain[len(ready) :] if entry.cooling]
        )
        assert result.headers["retry-after"] == str(max(1, math.ceil(round(soonest - NOW, 6))))
    else:
        index, kind = winner
        if kind == "served":
            assert result.status == 200
            assert result.headers["x-waterfall-provider"] == f"p{index}"
        else:
            assert result.status == int(chain[index].behaviour.rsplit("=", 1)[1])
    after = await app.cooldowns.snapshot()
    for key, until in before.items():
        assert after[key] >= until  # cooldowns never shrink
    for i, until in deadlines.items():
        assert after[f"p{i}/fake-small"] == pytest.approx(until, abs=1e-6)
    assert set(after) == set(before) | {f"p{i}/fake-small" for i in deadlines}  # no other
    await app.shutdown()


@given(chain=chains(stream=False))
def test_json_request_is_served_by_the_first_entry_that_can(chain: list[Entry]) -> None:
    asyncio.run(check_one_request(chain, stream=False))


@given(chain=chains(stream=True))
def test_streaming_request_is_served_by_the_first_entry_that_can(chain: list[Entry]) -> None:
    asyncio.run(check_one_request(chain, stream=True))


step_behaviours = st.one_of(st.just("ok"), rate_limits, st.just("status:code=503"))


@given(
    advances=st.lists(st.integers(min_value=0, max_value=120).map(float), min_size=1, max_size=8),
    scripts=st.lists(st.lists(step_behaviours, max_size=8), min_size=3, max_size=3),
)
def test_cooling_entries_are_never_called_and_cooldowns_never_shrink(
    advances: list[float], scripts: list[list[str]]
) -> None:
    """Over a run of requests with time passing, whatever each upstream answers."""

    async def run() -> None:
        clock = Clock()
        app, net = build([Entry("ok", None)] * 3, clock, scripts)
        payload = {"model": "c", "messages": [{"role": "user", "content": "x"}]}
        for advance in advances:
            clock.now += advance
            before = await app.cooldowns.snapshot()
            counts = [len(net[f"p{i}"].calls()) for i in range(3)]
            result = await call(app, "POST", "/v1/chat/completions", payload)
            assert result.status in (200, 503)
            after = await app.cooldowns.snapshot()
            for key, until in before.items():
                assert after[key] >= until
                if until > clock.now:
                    index = int(key[1])
                    assert len(net[f"p{index}"].calls()) == counts[index]
        await app.shutdown()

    asyncio.run(run())


_NAMES = st.sampled_from(
    ["Authorization", "x-api-key", "Cookie", "host", "Content-Length", "TE", "Keep-Alive",
     "accept", "User-Agent", "x-custom", "X-Private", "openai-organization"]
)  # fmt: skip
_HEADERS = st.lists(
    st.one_of(
        st.tuples(_NAMES, st.text(st.characters(codec="latin-1"), max_size=6)),
        st.tuples(
            st.sampled_from(["connection", "Connection"]),
            st.lists(st.sampled_from(["keep-alive", " X-Private", "x-custom ", "close"])).map(
                ",".join
            ),
        ),
    ),
    max_size=8,
)


def _forwarded_reference(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """What may go upstream, written plainly: neither a never-forwarded name nor one that a
    Connection header names, compared without case; the rest in order, as written."""
    named = {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [(k, v) for k, v in pairs if k.lower() not in _NOT_FORWARDED | named]


@given(headers=_HEADERS)
def test_only_headers_that_may_go_upstream_are_forwarded(headers: list[tuple[str, str]]) -> None:
    assert forwarded_headers(headers) == _forwarded_reference(headers)
    # the middleware drops what the router would before decoding: the same headers go upstream
    scope = {"headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]}
    assert forwarded_headers(client_headers(scope, Limits())) == _forwarded_reference(headers)
