"""The conduct verdict: bad clients fail it, good ones pass, and it judges only what a fake
can know.

Clients here run against the in-process transport with a clock the test moves, so that gaps are
exact and nothing sleeps; the CLI and the control plane are checked against the same journals.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from waterfall_fakes import (
    ConductThresholds,
    FakeProvider,
    FakeTransport,
    assert_good_conduct,
    hint_seconds,
    journal_json,
    judge_conduct,
)
from waterfall_fakes.cli import main

BODY = {"model": "fake-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def fake(*script: str, clock: Clock | None = None) -> tuple[FakeProvider, httpx.Client, Clock]:
    clock = clock or Clock()
    provider = FakeProvider(script=list(script), clock=clock)
    client = httpx.Client(transport=FakeTransport(provider), base_url="http://fake/v1")
    return provider, client, clock


def send(client: httpx.Client, body: dict[str, object] = BODY) -> httpx.Response:
    return client.post("/chat/completions", json=body)


def retrying_client(
    client: httpx.Client,
    clock: Clock,
    delay: Callable[[int, httpx.Response], float],
    attempts: int = 6,
    body: dict[str, object] = BODY,
) -> list[int]:
    """Send ``body`` until it succeeds or ``attempts`` run out, waiting ``delay(n, answer)``
    (on the test's clock) before retry ``n + 1``."""
    statuses = []
    for n in range(attempts):
        try:
            answer = send(client, body)
        except httpx.RemoteProtocolError:  # a cut connection
            answer = httpx.Response(599)
        statuses.append(answer.status_code)
        if answer.status_code == 200:
            break
        clock.now += delay(n, answer)
    return statuses


def honouring(rng: random.Random) -> Callable[[int, httpx.Response], float]:
    """A good client: the hint when there is one, else doubling jittered backoff."""

    def delay(n: int, answer: httpx.Response) -> float:
        if "retry-after" in answer.headers:
            return float(answer.headers["retry-after"]) + 0.01
        if answer.status_code in (400, 401, 402, 403, 404):
            raise StopIteration
        return 0.1 * 2**n * rng.uniform(0.75, 1.25)

    return delay


def good_client(
    client: httpx.Client, clock: Clock, rng: random.Random, body: dict[str, object] = BODY
) -> None:
    with contextlib.suppress(StopIteration):
        retrying_client(client, clock, honouring(rng), body=body)


# -- bad clients fail ----------------------------------------------------------------------------


def test_a_tight_retry_loop_fails_backoff_and_storm() -> None:
    provider, client, clock = fake(*["status:code=503"] * 30)
    retrying_client(client, clock, lambda n, a: 0.001, attempts=30)
    verdict = judge_conduct(provider)
    assert not verdict.passed
    assert verdict.check("backoff").status == "fail"
    assert verdict.check("storm").status == "fail"
    assert verdict.check("retry_after").status == "not_judged"
    assert "29 retries within 1.000 s (at most 10)" in verdict.report()
    with pytest.raises(AssertionError, match="conduct verdict: FAIL"):
        assert_good_conduct(provider)


def test_ignoring_retry_after_fails() -> None:
    provider, client, clock = fake("rate_limit:seconds=2", "rate_limit:seconds=2", "ok")
    retrying_client(client, clock, lambda n, a: 0.5)
    verdict = judge_conduct(provider)
    check = verdict.check("retry_after")
    assert check.status == "fail"
    assert [(v.index, v.after) for v in check.violations] == [(1, 0), (2, 1)]
    assert "retried 0.500 s after a 429 that said to wait 2.000 s" in verdict.report()


def test_other_requests_for_the_model_during_the_wait_fail() -> None:
    provider, client, clock = fake("rate_limit:dialect=retry-after-ms,seconds=2")
    send(client)  # 429: wait 2 s
    clock.now += 0.01
    send(client, {**BODY, "max_tokens": 2})  # in flight as the hint went out: no fault
    clock.now += 0.5
    send(client, {**BODY, "max_tokens": 1})  # another request for the model, during the wait
    send(client, {**BODY, "model": "fake-large"})  # another model: not held back
    clock.now += 2
    send(client, {**BODY, "max_tokens": 0})  # after the wait
    check = judge_conduct(provider).check("retry_after")
    assert check.status == "fail"
    assert [(v.index, v.after) for v in check.violations] == [(2, 0)]
    assert "another request for fake-small came 0.510 s after a 429" in check.violations[0].message


@pytest.mark.parametrize(
    "dialect", ["retry-after", "retry-after-date", "retry-after-ms", "openai", "openrouter"]
)
def test_every_hint_dialect_is_read(dialect: str) -> None:
    provider, client, clock = fake(f"rate_limit:dialect={dialect},seconds=3")
    retrying_client(client, clock, lambda n, a: 1.0)
    assert judge_conduct(provider).check("retry_after").status == "fail"
    provider.reset()
    retrying_client(client, clock, lambda n, a: 3.0)
    assert judge_conduct(provider).check("retry_after").status == "pass"


def test_retrying_a_400_fails_and_a_corrected_request_does_not() -> None:
    provider, client, clock = fake("status:code=400", "status:code=400")
    retrying_client(client, clock, lambda n, a: 1.0, attempts=2)
    verdict = judge_conduct(provider)
    assert verdict.check("no_retry_4xx").status == "fail"
    assert "sent again 1.000 s after a 400" in verdict.report()
    provider.reset()
    send(client)
    clock.now += 1
    send(client, {**BODY, "max_tokens": 2})  # other bytes: a new request, not a retry
    assert judge_conduct(provider).passed


def test_a_request_sent_again_after_being_told_to_stop_fails() -> None:
    provider, client, clock = fake("insufficient_balance", "ok")
    retrying_client(client, clock, lambda n, a: 5.0)
    assert judge_conduct(provider).check("stop").status == "fail"


def test_fixed_gaps_do_not_grow_and_are_not_jittered() -> None:
    provider, client, clock = fake(*["status:code=500"] * 5, "ok")
    retrying_client(client, clock, lambda n, a: 30.0)  # a fixed cooldown that never grows
    check = judge_conduct(provider).check("backoff")
    assert check.status == "fail"
    messages = [v.message for v in check.violations]
    assert any(m.startswith("gaps did not grow") for m in messages)
    assert any(m.startswith("gaps are not jittered") for m in messages)


def test_a_noisy_tight_loop_does_not_grow() -> None:
    rng = random.Random(5)
    provider, client, clock = fake(*["status:code=503"] * 8, "ok")
    retrying_client(client, clock, lambda n, a: rng.uniform(0.012, 0.02), attempts=9)
    check = judge_conduct(provider, max_retries=100).check("backoff")
    assert check.status == "fail"
    assert [v.message.split(":")[0] for v in check.violations] == ["gaps did not grow"]


@pytest.mark.parametrize("seed", range(30))
def test_wide_jitter_and_a_cap_still_grow(seed: int) -> None:
    """The router's own schedule (0.5-1.5 jitter, doubling), and a capped one past its cap."""
    rng = random.Random(seed)
    provider, client, clock = fake(*["status:code=503"] * 10, "ok")
    retrying_client(
        client, clock, lambda n, a: min(0.05 * 2**n, 6.0) * rng.uniform(0.5, 1.5), attempts=11
    )
    verdict = judge_conduct(provider, max_retries=100, max_backoff=6)
    assert verdict.check("backoff").status == "pass"


def test_exact_doubling_is_not_jittered() -> None:
    provider, client, clock = fake(*["status:code=500"] * 5, "ok")
    retrying_client(client, clock, lambda n, a: 0.1 * 2**n)
    check = judge_conduct(provider).check("backoff")
    assert check.status == "fail"
    assert [v.message.split(":")[0] for v in check.violations] == ["gaps are not jittered"]


def test_identical_schedules_across_requests_are_not_jittered() -> None:
    clock = Clock()
    provider = FakeProvider(script=["status:code=502", "ok"], cycle=True, clock=clock)
    client = httpx.Client(transport=FakeTransport(provider), base_url="http://fake/v1")
    for i in range(3):
        retrying_client(client, clock, lambda n, a: 0.25, body={**BODY, "max_tokens": i + 1})
    check = judge_conduct(provider).check("backoff")
    assert check.status == "fail"
    assert (
        "retry 1 came 0.250 s after its failure in all of 3 requests" in check.violations[0].message
    )


# -- good clients pass ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(50))
def test_a_good_client_passes(seed: int) -> None:
    rng = random.Random(seed)
    script = [
        "rate_limit:seconds=2",
        "status:code=503",
        "status:code=500",
        "cut:bytes=10",
        "status:code=502",
        "ok",
        "status:code=400",
        "ok",
        "insufficient_balance",
    ]
    provider, client, clock = fake(*script)
    for i in range(4):
        good_client(client, clock, rng, {**BODY, "max_tokens": i + 1})
        clock.now += 0.5
    verdict = assert_good_conduct(provider)
    statuses = {c.name: c.status for c in verdict.checks}
    assert statuses == {
        "retry_after": "pass",
        "backoff": "pass",
        "storm": "pass",
        "no_retry_4xx": "pass",
        "stop": "pass",
    }


def test_a_proxy_that_fell_through_elsewhere_is_not_judged_wrong() -> None:
    """One attempt per failure, then nothing: the fake cannot tell a fall-through to another
    provider from giving up, and neither is misconduct."""
    provider, client, _clock = fake("rate_limit:seconds=60", "status:code=503", "status:code=400")
    for i in range(3):
        send(client, {**BODY, "max_tokens": i + 1})
    verdict = judge_conduct(provider)
    assert verdict.passed
    assert verdict.check("retry_after").status == "pass"
    assert "1 hinted failures not retried here" in verdict.check("retry_after").summary
    assert verdict.check("backoff").status == "not_judged"
    assert any("fell through to another provider" in line for line in verdict.cannot_know)


def test_the_sdk_retry_count_header_starts_a_new_request() -> None:
    provider, client, clock = fake("status:code=400", "ok")
    send(client)
    clock.now += 1
    client.post("/chat/completions", json=BODY, headers={"x-stainless-retry-count": "0"})
    assert judge_conduct(provider).passed


def test_nothing_to_judge_passes_with_every_check_not_judged() -> None:
    provider, client, _ = fake()
    send(client)
    verdict = judge_conduct(provider)
    assert verdict.passed
    assert {c.status for c in verdict.checks} == {"not_judged"}


def test_hint_seconds_reads_dates_and_ignores_garbage() -> None:
    assert hint_seconds(429, {"retry-after": "Thu, 01 Jan 1970 00:00:10 GMT"}, 4.0) == 6.0
    assert hint_seconds(429, {"retry-after": "soon"}, 0.0) is None
    assert hint_seconds(429, {"retry-after-ms": "250"}, 0.0) == 0.25
    assert hint_seconds(503, {"retry-after": "1"}, 0.0) == 1.0
    remaining = {"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "1s"}
    assert hint_seconds(429, remaining, 0.0) is None  # a limit with room left is no hint
    assert hint_seconds(200, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "9"}, 0) is None


def test_thresholds_change_the_verdict() -> None:
    provider, client, clock = fake(*["status:code=503"] * 4, "ok")
    rng = random.Random(1)
    retrying_client(client, clock, lambda n, a: 0.005 * 2**n * rng.uniform(0.8, 1.2))
    assert judge_conduct(provider).check("backoff").status == "fail"
    assert judge_conduct(provider, min_gap=0.001).check("backoff").status == "pass"
    with pytest.raises(ValueError, match="min_gap"):
        judge_conduct(provider, min_gap=-1)
    assert ConductThresholds().model_dump() == {
        "tolerance": 0.05,
        "min_gap": 0.01,
        "max_backoff": 8.0,
        "window": 1.0,
        "max_retries": 10,
    }


# -- the same verdict from the journal's JSON, the control plane and the command -----------------


def test_the_journal_json_gives_the_same_verdict() -> None:
    provider, client, clock = fake("rate_limit:seconds=1", "status:code=400", "status:code=500")
    retrying_client(client, clock, lambda n, a: 0.2, attempts=4)
    direct = judge_conduct(provider).to_json()
    from_json = judge_conduct(json.loads(json.dumps(journal_json(provider)))).to_json()
    over_http = client.get("http://fake/_fake/verdict").json()
    assert direct == from_json == over_http
    assert direct["passed"] is False


def test_verdict_thresholds_over_http() -> None:
    _provider, client, clock = fake(*["status:code=503"] * 3, "ok")
    retrying_client(client, clock, lambda n, a: 0.005 * 2**n * (1 + n / 7))
    assert client.get("http://fake/_fake/verdict").json()["passed"] is False
    relaxed = client.get("http://fake/_fake/verdict", params={"min_gap": "0.001"}).json()
    assert relaxed["passed"] is True
    assert relaxed["thresholds"]["min_gap"] == 0.001
    bad = client.get("http://fake/_fake/verdict", params={"window": "0"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_value"
    assert client.get("http://fake/_fake/verdict", params={"window": "x"}).status_code == 400


def test_the_verdict_command_reads_a_saved_journal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    provider, client, clock = fake("status:code=400", "status:code=400")
    retrying_client(client, clock, lambda n, a: 1.0, attempts=2)
    path = tmp_path / "journal.json"
    path.write_text(json.dumps(journal_json(provider)), encoding="utf-8")
    assert main(["verdict", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("conduct verdict: FAIL (1 of 5 checks failed; 2 requests")
    assert "  FAIL  no_retry_4xx" in out
    assert main(["verdict", str(path), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["passed"] is False
    provider.reset()
    send(client)
    path.write_text(json.dumps(journal_json(provider)), encoding="utf-8")
    assert main(["verdict", str(path), "--min-gap", "0.5"]) == 0
    assert "conduct verdict: PASS" in capsys.readouterr().out


def test_the_verdict_command_cannot_read_its_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verdict", str(tmp_path / "absent.json")]) == 2
    (tmp_path / "list.json").write_text("[]", encoding="utf-8")
    assert main(["verdict", str(tmp_path / "list.json")]) == 2
    assert main(["verdict", str(tmp_path / "list.json"), "--window", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("waterfall-fakes: cannot judge ") == 3
    assert "not a journal" in err


@pytest.mark.loopback
def test_the_verdict_command_reads_a_running_fake(capsys: pytest.CaptureFixture[str]) -> None:
    from waterfall_fakes import FakeServer

    with FakeServer(FakeProvider(script=["status:code=400", "status:code=400"])) as server:
        for _ in range(2):
            httpx.post(server.url + "/chat/completions", json=BODY)
        assert main(["verdict", server.url]) == 1
        assert main(["verdict", server.root + "/", "--json"]) == 1
        assert main(["verdict", server.root + "/nowhere"]) == 2  # not a fake: a 404
    out, err = capsys.readouterr()
    assert "  FAIL  no_retry_4xx" in out
    assert '"passed": false' in out
    assert "waterfall-fakes: cannot judge " in err
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert main(["verdict", f"http://127.0.0.1:{port}/v1"]) == 2  # nothing listens there
