"""Rules: faults that match the request, once, N times, always or at a seeded rate, from the
config, from Python and queued for the next N matching requests."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import find, given
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from pydantic import ValidationError

from waterfall_fakes import (
    BEHAVIOUR_HEADER,
    FakeConfig,
    FakeProvider,
    NoDone,
    NoUsage,
    Reply,
    Rule,
    Status,
    When,
)
from waterfall_fakes.rules import request_text
from waterfall_fakes.strategies import fault_rules

CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"


def chat(
    model: str = "fake-small",
    text: str = "hello",
    *,
    stream: bool = False,
    tools: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    if tools:
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    return body


def send(
    fake: FakeProvider,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    path: str = CHAT,
) -> Reply:
    return fake.handle("POST", path, headers or {}, json.dumps(body).encode())


def applied(fake: FakeProvider) -> list[tuple[Any, ...]]:
    return [r.behaviours for r in fake.requests]


# -- matching ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rule", "body", "headers", "path", "hit"),
    [
        ({}, chat(), {}, CHAT, True),
        ({"model": "fake-s*"}, chat("fake-small"), {}, CHAT, True),
        ({"model": "fake-s*"}, chat("fake-large"), {}, CHAT, False),
        ({"model": "fake-?mall"}, chat("fake-small"), {}, CHAT, True),
        ({"stream": True}, chat(stream=True), {}, CHAT, True),
        ({"stream": True}, chat(), {}, CHAT, False),
        ({"stream": False}, chat(), {}, CHAT, True),
        ({"tools": True}, chat(tools=True), {}, CHAT, True),
        ({"tools": True}, chat(), {}, CHAT, False),
        ({"tools": False}, chat(tools=True), {}, CHAT, False),
        ({"headers": {"X-Tenant": "blue*"}}, chat(), {"x-tenant": "blue-7"}, CHAT, True),
        ({"headers": {"x-tenant": "blue*"}}, chat(), {"X-Tenant": "red"}, CHAT, False),
        ({"headers": {"x-tenant": "*"}}, chat(), {}, CHAT, False),
        ({"messages": r"\bsummar(y|ise)\b"}, chat(text="please summarise this"), {}, CHAT, True),
        ({"messages": "^secret"}, chat(text="no secret here"), {}, CHAT, False),
        ({"messages": "^secret"}, chat(text="a\nsecret"), {}, CHAT, False),
        ({"path": "*/embeddings"}, {"model": "fake-small", "input": "x"}, {}, EMBEDDINGS, True),
        ({"path": "*/embeddings"}, chat(), {}, CHAT, False),
        ({"messages": "cat", "model": "fake-small"}, chat(text="a cat"), {}, CHAT, True),
        ({"messages": "cat", "model": "fake-large"}, chat(text="a cat"), {}, CHAT, False),
    ],
)
def test_a_rule_matches_on_every_condition_given(
    rule: dict[str, Any], body: dict[str, Any], headers: dict[str, str], path: str, hit: bool
) -> None:
    fake = FakeProvider(rules=[{**rule, "behaviours": "status:code=503"}])
    reply = send(fake, body, headers, path)
    assert reply.status == (503 if hit else 200)


def test_request_text_covers_messages_prompts_and_inputs() -> None:
    parts = [{"type": "text", "text": "one"}, {"type": "image_url", "image_url": {}}]
    body = {"messages": [{"role": "user", "content": parts}, {"role": "user", "content": "two"}]}
    assert request_text(body) == "one\ntwo"
    assert request_text({"prompt": ["a", "b"]}) == "a\nb"
    assert request_text({"input": "x"}) == "x"
    assert request_text(None) == ""


def test_rules_add_their_behaviours_after_the_step_and_before_the_header() -> None:
    fake = FakeProvider(script=["no_usage"], rules=[{"behaviours": "no_done"}])
    send(fake, chat(), {BEHAVIOUR_HEADER: "chunking:size=3"})
    assert [b.kind for b in fake.requests[0].behaviours] == ["no_usage", "no_done", "chunking"]


# -- how often -------------------------------------------------------------------------------
def test_once_n_times_and_the_nth_matching_request() -> None:
    fake = FakeProvider()
    fake.add_rule(Rule(name="once", model="fake-small", times=1, behaviours="status:code=500"))
    fake.add_rule({"name": "third", "model": "fake-large", "nth": 3, "behaviours": "rate_limit"})
    models = ["fake-large", "fake-small", "fake-large", "fake-small", "fake-large", "fake-large"]
    assert [send(fake, chat(m)).status for m in models] == [200, 500, 200, 200, 429, 200]
    status = {s.rule.name: (s.matched, s.applied) for s in fake.rules()}
    assert status == {"once": (2, 1), "third": (4, 1)}


def test_nth_with_times_applies_from_the_nth_on() -> None:
    fake = FakeProvider(rules=[{"nth": 2, "times": 2, "behaviours": "status:code=502"}])
    assert [send(fake, chat()).status for _ in range(5)] == [200, 502, 502, 200, 200]


def test_a_rate_and_a_window_in_a_rule() -> None:
    now = [100.0]
    fake = FakeProvider(
        clock=lambda: now[0],
        seed=5,
        rules=[{"name": "outage", "start": 10, "end": 20, "behaviours": "status:code=503"}],
    )
    fake.add_rule({"name": "flaky", "p": 0.5, "model": "fake-large", "behaviours": "cut"})
    seen = []
    for t in (0, 15, 25):
        now[0] = 100.0 + t
        seen.append(send(fake, chat()).status)
    assert seen == [200, 503, 200]
    cuts = [send(fake, chat("fake-large")).cut for _ in range(40)]
    assert 10 <= sum(cuts) <= 30


# -- the Python API ----------------------------------------------------------------------------
def test_add_list_replace_remove_and_clear_rules() -> None:
    fake = FakeProvider(rules=[{"model": "fake-large", "behaviours": "no_usage"}])
    added = fake.add_rule({"behaviours": "no_done"})
    assert [s.rule.name for s in fake.rules()] == ["rule-0", added.name]
    assert added.name == "rule-1"
    named = fake.add_rule(Rule(name="slow", behaviours="slow_chunks"))
    send(fake, chat())
    assert {s.rule.name: s.matched for s in fake.rules()} == {"rule-0": 0, "rule-1": 1, "slow": 1}
    again = fake.add_rule(Rule(name="slow", behaviours="status:code=500"))  # replaced
    assert [s.rule for s in fake.rules()][-1] == again != named
    assert fake.rules()[-1].matched == 0
    assert fake.remove_rule("rule-1")
    assert not fake.remove_rule("rule-1")
    assert [s.rule.name for s in fake.rules()] == ["rule-0", "slow"]
    fake.clear_rules()
    assert fake.rules() == []
    fake.add_rule({"behaviours": "no_done"})
    fake.reset()  # back to the config's rules
    assert [(s.rule.name, s.matched) for s in fake.rules()] == [("rule-0", 0)]


def test_rule_status_as_json_gives_the_rule_back() -> None:
    fake = FakeProvider()
    rule = fake.add_rule(
        {"model": "fake-*", "headers": {"X-A": "b"}, "p": 0.5, "behaviours": "cut"}
    )
    data = fake.rules()[0].to_json()
    assert data["behaviours"] == "cut"
    assert data["headers"] == {"x-a": "b"}
    assert (data["matched"], data["applied"], data["queued"]) == (0, 0, False)
    again = Rule.model_validate({k: v for k, v in data.items() if k in Rule.model_fields})
    assert again == rule
    json.dumps(data)  # plain JSON


def test_a_config_file_holds_rules() -> None:
    config = FakeConfig.model_validate(
        {
            "seed": 3,
            "rules": [
                {"name": "no-tools", "tools": True, "behaviours": "status:code=400"},
                {"model": "fake-large", "behaviours": [{"kind": "no_usage"}, "no_done"]},
            ],
        }
    )
    fake = FakeProvider(config)
    assert send(fake, chat(tools=True)).status == 400
    send(fake, chat("fake-large"))
    assert fake.requests[-1].behaviours == (NoUsage(), NoDone())


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"messages": "("}, "not a regular expression"),
        ({"nth": 2, "skip": 1}, "nth or skip"),
        ({"behaviours": "when:p=0.5; cut"}, "cannot hold a 'when' gate"),
        ({"behaviours": "nap"}, "'nap'"),
        ({"p": 2}, "less than or equal to 1"),
        ({"colour": "red"}, "Extra inputs"),
    ],
)
def test_a_bad_rule_is_refused_with_the_reason(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FakeProvider().add_rule(rule)


def test_two_rules_of_one_name_in_a_config_are_refused() -> None:
    with pytest.raises(ValidationError, match="same name"):
        FakeConfig(rules=[Rule(name="a"), Rule(name="a")])


# -- queued behaviours -------------------------------------------------------------------------
def test_queued_behaviours_apply_to_the_next_n_matching_requests_then_go() -> None:
    fake = FakeProvider()
    queued = fake.queue("status:code=503", count=2, model="fake-large")
    assert queued.name is not None
    assert queued.name.startswith("queue-")
    assert fake.rules()[0].queued
    models = ["fake-small", "fake-large", "fake-small", "fake-large", "fake-large"]
    assert [send(fake, chat(m)).status for m in models] == [200, 503, 200, 503, 200]
    assert fake.rules() == []
    with pytest.raises(ValueError, match="at least 0"):
        fake.queue("cut", count=-1)


@given(
    st.integers(0, 6),
    st.lists(st.sampled_from(["fake-small", "fake-large"]), max_size=20),
    st.booleans(),
)
def test_queued_behaviours_apply_to_exactly_the_next_n_matching_requests(
    count: int, models: list[str], with_rule: bool
) -> None:
    fake = FakeProvider(
        rules=[{"model": "fake-small", "behaviours": "no_usage"}] if with_rule else []
    )
    fake.queue([Status(code=503)], count=count, model="fake-large")
    statuses = [send(fake, chat(m)).status for m in models]
    large = [s for m, s in zip(models, statuses, strict=True) if m == "fake-large"]
    hits = min(count, len(large))
    assert large == [503] * hits + [200] * (len(large) - hits)
    assert all(s == 200 for m, s in zip(models, statuses, strict=True) if m == "fake-small")
    assert [s.queued for s in fake.rules()] == [False] * with_rule + [True] * (count > len(large))


# -- order independence and reproducibility ----------------------------------------------------
ALWAYS_RULES = [
    {"model": "fake-large", "behaviours": "status:code=503"},
    {"stream": True, "behaviours": "no_done"},
    {"tools": True, "behaviours": "no_usage"},
    {"messages": "cat", "behaviours": "chunking:size=5"},
]
requests = st.builds(
    chat,
    st.sampled_from(["fake-small", "fake-large"]),
    st.sampled_from(["a cat", "a dog"]),
    stream=st.booleans(),
    tools=st.booleans(),
)


@given(st.lists(requests, max_size=8), st.randoms(use_true_random=False))
def test_rules_without_counts_give_a_request_the_same_faults_in_any_order(
    bodies: list[dict[str, Any]], rnd: Any
) -> None:
    def run(order: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
        fake = FakeProvider(rules=ALWAYS_RULES)
        for body in order:
            send(fake, body)
        return {json.dumps(r.json, sort_keys=True): r.behaviours for r in fake.requests}

    shuffled = list(bodies)
    rnd.shuffle(shuffled)
    assert run(bodies) == run(shuffled)


counted_rules = st.lists(
    st.fixed_dictionaries(
        {"behaviours": st.sampled_from(["status:code=500", "cut", "no_done", "rate_limit"])},
        optional={
            "model": st.sampled_from(["fake-small", "fake-*"]),
            "stream": st.booleans(),
            "p": st.floats(0, 1),
            "times": st.integers(0, 4),
            "nth": st.integers(1, 4),
        },
    ),
    max_size=4,
)


@given(st.integers(0, 2**32), counted_rules, st.lists(requests, max_size=12))
def test_rules_and_rates_reproduce_exactly_from_the_seed(
    seed: int, rules: list[dict[str, Any]], bodies: list[dict[str, Any]]
) -> None:
    def run() -> list[tuple[Any, ...]]:
        fake = FakeProvider(seed=seed, rules=rules)
        replies = [send(fake, body) for body in bodies]
        return [(r.status, r.body, b) for r, b in zip(replies, applied(fake), strict=True)]

    assert run() == run()


# -- the journal -------------------------------------------------------------------------------
def test_the_journal_says_what_answered_and_the_draws() -> None:
    from waterfall_fakes.journal import entry_json

    fake = FakeProvider(seed=11, script=["no_usage"], rules=[{"name": "flaky", "p": 0.5}])
    fake.add_rule({"name": "always", "behaviours": "no_done"})
    for _ in range(6):
        send(fake, chat(), {BEHAVIOUR_HEADER: "when:p=0.5; chunking:size=9"})
    first = fake.requests[0]
    assert first.number == 0
    assert first.answered_by[:2] == ("script:0", "rule:always")
    gates = [[d.gate for d in r.draws] for r in fake.requests]
    assert gates == [["rule:flaky", "header:when:p=0.5; chunking:size=9"]] * 6
    for record in fake.requests:
        header_draw = record.draws[1]
        assert header_draw.hit == ("header" in record.answered_by)
        assert header_draw.number == record.number
    # the same seed and requests: the same draws
    again = FakeProvider(seed=11, script=["no_usage"], rules=[{"name": "flaky", "p": 0.5}])
    again.add_rule({"name": "always", "behaviours": "no_done"})
    for _ in range(6):
        send(again, chat(), {BEHAVIOUR_HEADER: "when:p=0.5; chunking:size=9"})
    assert [r.draws for r in again.requests] == [r.draws for r in fake.requests]
    entry = entry_json(first)
    assert entry["answered_by"] == list(first.answered_by)
    assert entry["draws"][0] == {
        "gate": "rule:flaky",
        "number": 0,
        "value": first.draws[0].value,
        "p": 0.5,
        "hit": first.draws[0].value < 0.5,
    }
    assert send(fake, {"model": "fake-small", "messages": []}, path="/v1/nowhere").status == 404
    assert (fake.requests[-1].number, fake.requests[-1].answered_by) == (None, ())


# -- the strategy ------------------------------------------------------------------------------
@given(st.integers(0, 2**32), fault_rules(max_size=3), st.lists(requests, max_size=10))
def test_drawn_rules_are_accepted_and_reproduce_from_the_seed(
    seed: int, rules: list[Rule], bodies: list[dict[str, Any]]
) -> None:
    assert len({r.name for r in rules}) == len(rules) <= 3

    def run() -> list[tuple[Any, ...]]:
        fake = FakeProvider(seed=seed, rules=rules)
        replies = [send(fake, body) for body in bodies]
        return [(r.status, r.body, q.draws) for r, q in zip(replies, fake.requests, strict=True)]

    assert run() == run()


def test_fault_rules_shrink_to_none_and_check_their_arguments() -> None:
    assert find(fault_rules(), lambda r: True) == []
    plainest = find(fault_rules(min_size=1), lambda r: True)
    assert plainest == [Rule(name="rule-0")]
    for kwargs in (
        {"min_size": -1},
        {"min_size": 2, "max_size": 1},
        {"steps": []},
        {"models": "x"},
    ):
        with pytest.raises(InvalidArgument):
            fault_rules(**kwargs)  # type: ignore[arg-type]
    gated = fault_rules(st.just([When()]), min_size=1)
    with pytest.raises(InvalidArgument):
        find(gated, lambda r: True)


def test_a_toml_config_file_holds_rules_and_gates(tmp_path: Any) -> None:
    from waterfall_fakes.cli import load_config

    path = tmp_path / "fake.toml"
    path.write_text(
        'seed = 9\nscript = ["when:times=1; status:code=500"]\nrepeat_last = true\n\n'
        '[[rules]]\nname = "large-down"\nmodel = "fake-large"\nbehaviours = "status:code=503"\n',
        encoding="utf-8",
    )
    fake = FakeProvider(load_config(path))
    assert [send(fake, chat()).status for _ in range(3)] == [500, 200, 200]
    assert send(fake, chat("fake-large")).status == 503
    assert fake.requests[-1].answered_by == ("rule:large-down",)
