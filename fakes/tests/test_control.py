"""The control plane under ``/_fake``: the journal equals what was received and answered, reset,
config, errors; over the in-process transport and a real loopback server."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waterfall_fakes import (
    BEHAVIOUR_HEADER,
    CONTROL_PREFIX,
    FakeApp,
    FakeProvider,
    FakeServer,
    FakeTransport,
    entry_json,
    is_control_path,
)

BODY = {"model": "fake-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def shared_server() -> Iterator[FakeServer]:
    with FakeServer(FakeProvider()) as running:
        yield running


@pytest.fixture
def server(shared_server: FakeServer) -> FakeServer:
    shared_server.provider = FakeProvider()
    return shared_server


def usage_in(answer: httpx.Response) -> dict[str, Any] | None:
    """The usage object the client received (a stream's last one)."""
    kind = answer.headers.get("content-type", "")
    if kind.startswith("application/json"):
        obj = answer.json()
        return obj.get("usage") if isinstance(obj, dict) else None
    found = None
    for line in answer.text.splitlines():
        if line.startswith("data: {"):
            try:
                obj = json.loads(line[6:])
            except ValueError:  # a malformed_event's data
                continue
            if isinstance(obj.get("usage"), dict):
                found = obj["usage"]
    return found


# -- the journal equals the traffic, for any sequence ----------------------------------------------

PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/health", "/v1/models"]
SPECS = [None, "ok", "status:code=503", "rate_limit:dialect=openai", "truncate:events=2"]
SPECS += ["no_usage", "status:code=400", "malformed_event", "bogus"]
bodies = st.one_of(
    st.fixed_dictionaries(
        {
            "model": st.sampled_from(["fake-small", "fake-large", "nope"]),
            "messages": st.just([{"role": "user", "content": "héllo"}]),
            "prompt": st.just("once upon"),
            "input": st.just("embed me"),
            "max_tokens": st.integers(0, 4),
            "stream": st.booleans(),
            "stream_options": st.just({"include_usage": True}),
        }
    ).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=20),
)
requests = st.tuples(
    st.sampled_from(["GET", "POST"]),
    st.sampled_from([*PATHS, "/v1/nowhere"]),
    st.sampled_from(SPECS),
    bodies,
)


@settings(max_examples=60, deadline=None)
@given(sequence=st.lists(requests, max_size=8), script=st.lists(st.sampled_from(SPECS[1:7])))
def test_the_journal_is_what_was_received_and_answered(
    sequence: list[tuple[str, str, str | None, bytes]], script: list[str]
) -> None:
    provider = FakeProvider(script=script)
    client = httpx.Client(transport=FakeTransport(provider), base_url="http://fake")
    sent = []
    for method, path, spec, body in sequence:
        headers = {BEHAVIOUR_HEADER: spec} if spec else {}
        answer = client.request(method, path, content=body, headers=headers)
        sent.append((method, path, body, headers, answer))
        if method == "POST" and path.startswith("/v1/") and answer.status_code < 300:
            client.get(CONTROL_PREFIX + "/config")  # never journaled, never counted
    journal = client.get(CONTROL_PREFIX + "/journal").json()
    assert journal["count"] == len(sequence) == len(journal["entries"])
    assert journal["entries"] == [entry_json(r) for r in provider.requests]
    for i, (entry, (method, path, body, headers, answer)) in enumerate(
        zip(journal["entries"], sent, strict=True)
    ):
        assert entry["index"] == i
        assert (entry["method"], entry["path"]) == (method, path)
        raw = (
            base64.b64decode(entry["body"])
            if entry["body_encoding"] == "base64"
            else entry["body"].encode()
        )
        assert raw == body
        for name, value in headers.items():
            assert entry["headers"][name] == value
        assert entry["status"] == answer.status_code
        assert entry["response_headers"] == dict(answer.headers)
        assert entry["usage"] == usage_in(answer)
        assert entry["client"] is None
        assert entry["received_at"] > 0
    since = client.get(CONTROL_PREFIX + "/journal", params={"since": 2}).json()
    assert since["entries"] == journal["entries"][2:]
    assert since["count"] == journal["count"]


def test_control_paths_do_not_move_the_script() -> None:
    provider = FakeProvider(script=["status:code=503", "ok"])
    client = httpx.Client(transport=FakeTransport(provider), base_url="http://fake")
    for path in ("", "/journal", "/config", "/verdict", "/nope"):
        client.get(CONTROL_PREFIX + path)
    assert provider.requests == []
    assert client.post("/v1/chat/completions", json=BODY).status_code == 503


def test_reset_forgets_and_rewinds() -> None:
    provider = FakeProvider(script=["status:code=503", "ok"])
    client = httpx.Client(transport=FakeTransport(provider), base_url="http://fake")
    assert client.post("/v1/chat/completions", json=BODY).status_code == 503
    answer = client.post(CONTROL_PREFIX + "/reset")
    assert answer.json() == {"version": 1, "reset": True}
    assert client.get(CONTROL_PREFIX + "/journal").json()["entries"] == []
    assert client.post("/v1/chat/completions", json=BODY).status_code == 503


def test_config_shows_the_fake_without_its_key() -> None:
    provider = FakeProvider(name="cfg", api_key="sk-secret-123", script=["status:code=502"])
    client = httpx.Client(transport=FakeTransport(provider), base_url="http://fake")
    answer = client.get(CONTROL_PREFIX + "/config")
    assert answer.status_code == 200
    assert "sk-secret-123" not in answer.text
    config = answer.json()
    assert config["version"] == 1
    assert config["config"]["api_key"] == "***"
    assert config["config"]["script"] == [[{"kind": "status", "code": 502, "message": None}]]
    assert config["name"] == "cfg"
    index = client.get(CONTROL_PREFIX).json()
    assert index["endpoints"]["GET /_fake/journal"].startswith("The requests received")
    assert "DELETE /_fake/rules/NAME" in index["endpoints"]
    assert client.get(CONTROL_PREFIX + "/").json() == index


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/_fake/nothing", 404, "unknown_url"),
        ("DELETE", "/_fake/journal", 405, "method_not_allowed"),
        ("GET", "/_fake/reset", 405, "method_not_allowed"),
        ("GET", "/_fake/journal?since=x", 400, "invalid_value"),
        ("GET", "/_fake/journal?since=-1", 400, "invalid_value"),
    ],
)
def test_bad_control_requests_get_openai_errors(
    method: str, path: str, status: int, code: str
) -> None:
    client = httpx.Client(transport=FakeTransport(FakeProvider()), base_url="http://fake")
    answer = client.request(method, path)
    assert answer.status_code == status
    error = answer.json()["error"]
    assert error["code"] == code
    assert error["message"]
    if status == 405:
        assert answer.headers["allow"]


def test_the_prefix_cannot_clash_with_an_api_route() -> None:
    assert is_control_path("/_fake")
    assert is_control_path("/_fake/journal")
    assert not is_control_path("/_faker")
    assert not is_control_path("/v1/_fake/journal")
    assert not any(is_control_path(p) for p in PATHS)


# -- rules and queued behaviours over HTTP -------------------------------------------------------


def control_client(**config: Any) -> tuple[FakeProvider, httpx.Client]:
    provider = FakeProvider(**config)
    return provider, httpx.Client(transport=FakeTransport(provider), base_url="http://fake")


def test_rules_over_http_add_list_remove_and_clear() -> None:
    _provider, client = control_client(
        rules=[{"name": "cfg", "model": "fake-large", "behaviours": "status:code=502"}]
    )
    added = client.post(
        "/_fake/rules",
        json=[
            {"name": "slow-streams", "stream": True, "behaviours": "slow_first_byte:seconds=0"},
            {"messages": "(?i)boom", "behaviours": "status:code=501", "times": 1},
        ],
    )
    assert added.status_code == 200
    names = [r["name"] for r in added.json()["rules"]]
    assert names[0] == "slow-streams"
    assert names[1].startswith("rule-")
    listed = client.get("/_fake/rules").json()["rules"]
    assert [r["name"] for r in listed] == ["cfg", *names]
    assert listed[2]["behaviours"] == "status:code=501"
    boom = {**BODY, "messages": [{"role": "user", "content": "BOOM"}]}
    assert client.post("/v1/chat/completions", json=boom).status_code == 501
    assert client.post("/v1/chat/completions", json=boom).status_code == 200  # times=1: spent
    big = client.post("/v1/chat/completions", json={**BODY, "model": "fake-large"})
    assert big.status_code == 502
    entries = client.get("/_fake/journal").json()["entries"]
    assert [e["answered_by"] for e in entries] == [[f"rule:{names[1]}"], [], ["rule:cfg"]]
    counts = {
        r["name"]: (r["matched"], r["applied"]) for r in client.get("/_fake/rules").json()["rules"]
    }
    assert counts[names[1]] == (2, 1)
    assert client.delete("/_fake/rules/slow-streams").json() == {
        "version": 1,
        "removed": "slow-streams",
    }
    gone = client.delete("/_fake/rules/slow-streams")
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "rule_not_found")
    assert client.delete("/_fake/rules").json()["cleared"] is True
    assert client.get("/_fake/rules").json()["rules"] == []
    client.post("/_fake/reset")  # the config's rules come back
    assert [r["name"] for r in client.get("/_fake/rules").json()["rules"]] == ["cfg"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"model": "x", "behaviours": "nap"}, "invalid_rule"),
        ({"nth": 0, "behaviours": "ok"}, "invalid_rule"),
        ({"messages": "(", "behaviours": "ok"}, "invalid_rule"),
        ({"colour": "red"}, "invalid_rule"),
        ([], "invalid_rule"),
        ("text", "invalid_rule"),
    ],
)
def test_a_bad_rule_is_a_400_and_adds_nothing(body: Any, code: str) -> None:
    provider, client = control_client()
    answer = client.post(
        "/_fake/rules", json=[{"behaviours": "ok"}, body] if isinstance(body, dict) else body
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == code
    assert provider.rules() == []


def test_a_body_that_is_not_json_is_a_400() -> None:
    _, client = control_client()
    answer = client.post("/_fake/rules", content=b"{nope")
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, "invalid_json")


def test_queue_over_http() -> None:
    _provider, client = control_client()
    queued = client.post(
        "/_fake/queue", json={"behaviours": "status:code=503", "count": 2, "model": "fake-s*"}
    ).json()["queued"]
    assert queued["queued"] is True
    assert queued["times"] == 2
    assert [r["name"] for r in client.get("/_fake/queue").json()["rules"]] == [queued["name"]]
    statuses = [
        client.post("/v1/chat/completions", json={**BODY, "model": m}).status_code
        for m in ("fake-large", "fake-small", "fake-large", "fake-small", "fake-small")
    ]
    assert statuses == [200, 503, 200, 503, 200]
    assert client.get("/_fake/queue").json()["rules"] == []  # spent: gone
    client.post("/_fake/queue", json={"behaviours": "status:code=500"})
    assert client.delete("/_fake/queue").json()["cleared"] == 1
    assert client.post("/v1/chat/completions", json=BODY).status_code == 200
    assert (
        client.post("/_fake/queue", json={"behaviours": "ok", "count": 0}).json()["queued"] is None
    )


@pytest.mark.parametrize(
    "body",
    [
        {"count": 1},
        {"behaviours": "ok", "count": -1},
        {"behaviours": "ok", "count": "2"},
        {"behaviours": "ok", "times": 3},
        {"behaviours": "nap"},
        {"behaviours": "ok", "stream": "sometimes"},
    ],
)
def test_a_bad_queue_entry_is_a_400(body: dict[str, Any]) -> None:
    provider, client = control_client()
    answer = client.post("/_fake/queue", json=body)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_queue"
    assert provider.rules() == []


def test_the_script_is_replaced_over_http() -> None:
    provider, client = control_client(script=["status:code=500"], rules=[{"name": "keep"}])
    client.post("/v1/chat/completions", json=BODY)
    assert client.get("/_fake/script").json() == {
        "version": 1,
        "script": ["status"],
        "cycle": False,
        "repeat_last": False,
    }
    answer = client.put(
        "/_fake/script", json={"script": ["ok", "status:code=503"], "repeat_last": True}
    )
    assert answer.json()["script"] == ["ok", "status:code=503"]
    statuses = [client.post("/v1/chat/completions", json=BODY).status_code for _ in range(3)]
    assert statuses == [200, 503, 503]  # from its first step, then the last one forever
    assert len(provider.requests) == 4  # the journal stays
    assert [r.rule.name for r in provider.rules()] == ["keep"]  # and the rules


@pytest.mark.parametrize(
    "body",
    [
        {"script": ["nap"]},
        {"script": "ok"},
        {"script": ["ok"], "cycle": True, "repeat_last": True},
        {"script": ["ok"], "cycle": "yes"},
        {"script": ["ok"], "loop": True},
        [],
    ],
)
def test_a_bad_script_is_a_400_and_changes_nothing(body: Any) -> None:
    provider, client = control_client(script=["status:code=502"])
    answer = client.put("/_fake/script", json=body)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_script"
    assert client.post("/v1/chat/completions", json=BODY).status_code == 502
    assert provider.config.script[0][0].kind == "status"


MODELS = ["fake-small", "fake-medium", "fake-large"]


@settings(max_examples=60, deadline=None)
@given(
    models=st.lists(st.sampled_from(MODELS), max_size=12),
    count=st.integers(0, 5),
    pattern=st.sampled_from(["fake-small", "fake-*", "*-large", "nothing"]),
    script=st.lists(st.sampled_from(["ok", "no_usage", "keepalive"]), max_size=3),
)
def test_queued_behaviours_apply_to_exactly_the_next_n_matching_requests(
    models: list[str], count: int, pattern: str, script: list[str]
) -> None:
    import fnmatch

    _, client = control_client(script=script)
    client.post(
        "/_fake/queue", json={"behaviours": "status:code=418", "count": count, "model": pattern}
    )
    statuses = [
        client.post("/v1/chat/completions", json={**BODY, "model": m}).status_code for m in models
    ]
    entries = client.get("/_fake/journal").json()["entries"]
    matching = [i for i, m in enumerate(models) if fnmatch.fnmatchcase(m, pattern)]
    hit = [
        i
        for i, e in enumerate(entries)
        if any(a.startswith("rule:queue-") for a in e["answered_by"])
    ]
    assert hit == matching[:count]
    assert [i for i, s in enumerate(statuses) if s == 418] == hit


# -- over a real server: the client's address and how each reply went out ------------------------


@pytest.mark.loopback
def test_the_server_journals_delivery(server: FakeServer) -> None:
    with httpx.Client(base_url=server.root, timeout=5) as client:
        ok = client.post("/v1/chat/completions", json={**BODY, "stream": True})
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(
                "/v1/chat/completions",
                json={**BODY, "stream": True},
                headers={BEHAVIOUR_HEADER: "cut:bytes=50"},
            )
        with pytest.raises(httpx.ReadTimeout):
            client.post(
                "/v1/chat/completions",
                json=BODY,
                headers={BEHAVIOUR_HEADER: "hang"},
                timeout=httpx.Timeout(5, read=0.2),
            )
        for _ in range(100):  # the server notices the client gone: at most 5 s
            entries = client.get("/_fake/journal").json()["entries"]
            if entries[2]["end"] != "pending":
                break
            time.sleep(0.05)
        done, cut, hung = entries
    assert done["end"] == "complete"
    assert done["bytes_sent"] == len(ok.content)
    assert done["usage"] is None  # not asked for: no include_usage
    assert done["timings"]["headers_ms"] <= done["timings"]["end_ms"]
    host, port = done["client"].rsplit(":", 1)
    assert host == "127.0.0.1"
    assert int(port) > 0
    assert (cut["end"], cut["bytes_sent"]) == ("cut", 50)
    assert hung["end"] == "client_gone"
    assert hung["timings"]["headers_ms"] is None
    assert hung["bytes_sent"] == 0


@pytest.mark.loopback
def test_the_asgi_app_journals_usage_sent(server: FakeServer) -> None:
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.Client(base_url=server.root) as client:
        whole = client.post("/v1/chat/completions", json=body)
        client.post(
            "/v1/chat/completions", json=body, headers={BEHAVIOUR_HEADER: "truncate:events=2"}
        )
        entries = client.get("/_fake/journal").json()["entries"]
    assert entries[0]["usage"] == usage_in(whole) != None  # noqa: E711
    assert entries[1]["usage"] is None  # the usage chunk was never sent
    assert isinstance(server._fake_app, FakeApp)


WIRE_SPECS = [None, "status:code=503", "truncate:events=2", "cut:bytes=40", "no_usage"]


@pytest.mark.loopback
@settings(max_examples=25, deadline=None)
@given(
    sequence=st.lists(
        st.tuples(st.sampled_from(WIRE_SPECS), st.booleans(), st.integers(0, 3)), max_size=6
    )
)
def test_over_the_wire_the_journal_is_what_was_sent(
    shared_server: FakeServer, sequence: list[tuple[str | None, bool, int]]
) -> None:
    """Over a real socket: each entry's status, bytes and end are what the client got."""
    shared_server.provider = FakeProvider()
    got: list[tuple[int, bytes, str]] = []
    with httpx.Client(base_url=shared_server.root, timeout=5) as client:
        for spec, stream, words in sequence:
            body = {**BODY, "max_tokens": words, "stream": stream}
            body["stream_options"] = {"include_usage": True} if stream else None
            headers = {BEHAVIOUR_HEADER: spec} if spec else {}
            received = bytearray()
            try:
                with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                    for chunk in r.iter_raw():
                        received += chunk
                    got.append((r.status_code, bytes(received), "complete"))
            except httpx.RemoteProtocolError:
                got.append((200, bytes(received), "cut"))
        entries = client.get("/_fake/journal").json()["entries"]
    assert len(entries) == len(got)
    for entry, (status, received, end) in zip(entries, got, strict=True):
        assert (entry["status"], entry["end"]) == (status, end)
        if end == "complete":
            assert entry["bytes_sent"] == len(received)
        else:  # what was sent before the cut: the client may not have read the last of it
            assert entry["bytes_sent"] >= len(received)
        assert entry["client"].startswith("127.0.0.1:")
