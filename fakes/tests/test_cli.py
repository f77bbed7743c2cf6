"""The ``waterfall-fakes`` command: ``behaviours``, config files, ``serve`` as a real process."""

from __future__ import annotations

import json
import re
import select
import signal
import socket
import subprocess
import sys
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from waterfall_fakes import (
    Behaviour,
    FakeConfig,
    FakeModel,
    FakeProvider,
    FakeTransport,
    Limits,
    Ok,
    RateLimit,
    Status,
)
from waterfall_fakes.cli import load_config, main

CHAT = "/chat/completions"
BODY = json.dumps(
    {"model": "fake-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
).encode()
URL_LINE = re.compile(r"^http://127\.0\.0\.1:(\d+)/v1$")


# -- behaviours ------------------------------------------------------------------------------------


def test_behaviours_lists_every_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["behaviours"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    heads = [line for line in lines if not line.startswith(" ")]
    docs = [line for line in lines if line.startswith("    ")]
    kinds = [
        cls.model_fields["kind"].default for cls in typing.get_args(typing.get_args(Behaviour)[0])
    ]
    assert [h.split(":")[0] for h in heads] == kinds
    assert len(kinds) == 25
    assert len(docs) == len(heads)
    assert all(d.strip() for d in docs)
    assert "ok\n    Answer normally (useful as a step in a script)." in out
    assert "rate_limit:dialect='retry-after',seconds=1.0\n" in out
    assert "chunking:size=None,at=None,seed=None,max_size=16\n" in out
    assert "hang:seconds=None\n    Send nothing for" in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["serve", "--log-level", "loud"])
    assert info.value.code == 2
    assert "--log-level" in capsys.readouterr().err


# -- config files ----------------------------------------------------------------------------------


def test_load_json_config(tmp_path: Path) -> None:
    path = tmp_path / "fake.json"
    path.write_text(
        json.dumps(
            {
                "name": "from-json",
                "seed": 4,
                "script": ["rate_limit:seconds=2", [{"kind": "status", "code": 503}]],
                "cycle": True,
                "limits": {"requests": 3, "window": 10, "dialect": "openrouter"},
                "models": [{"id": "m1", "usd_prompt": "0.0000001"}],
            }
        ),
        encoding="utf-8",
    )
    config = load_config(path)
    assert config == FakeConfig(
        name="from-json",
        seed=4,
        script=((RateLimit(seconds=2),), (Status(code=503),)),
        cycle=True,
        limits=Limits(requests=3, window=10, dialect="openrouter"),
        models=(FakeModel(id="m1", usd_prompt=Decimal("0.0000001")),),
    )
    assert config.models[0].usd_prompt == Decimal("0.0000001")


def test_load_toml_config(tmp_path: Path) -> None:
    path = tmp_path / "fake.toml"
    path.write_text(
        'name = "from-toml"\n'
        "seed = 11\n"
        'script = ["status:code=502", "ok"]\n'
        "reply_words = 4\n"
        "[limits]\n"
        "tokens = 500\n"
        "[[models]]\n"
        'id = "toml-model"\n'
        'sats_prompt = "0.25"\n',
        encoding="utf-8",
    )
    config = load_config(str(path))
    assert config.name == "from-toml"
    assert config.seed == 11
    assert config.script == ((Status(code=502),), (Ok(),))
    assert config.reply_words == 4
    assert config.limits == Limits(tokens=500)
    assert [m.id for m in config.models] == ["toml-model"]
    assert config.models[0].sats_prompt == Decimal("0.25")


def test_load_yaml_config(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    path = tmp_path / "fake.yaml"
    path.write_text("name: from-yaml\nscript:\n  - no_done\n  - [cut:bytes=3]\n", encoding="utf-8")
    config = load_config(path)
    assert config.name == "from-yaml"
    assert [[b.kind for b in step] for step in config.script] == [["no_done"], ["cut"]]


@pytest.mark.parametrize(
    ("name", "text", "needles"),
    [
        (
            "bad.json",
            '{"name": "x", "bogus_key": 1}',
            ["bogus_key: unknown setting"],
        ),
        ("bad.toml", "[limits]\nburst = 3\n", ["limits.burst: unknown setting"]),
        ("step.json", '{"script": ["status:code=99"]}', ["script", "status.code"]),
        ("kind.json", '{"script": ["teleport"]}', ["script", "'teleport'"]),
        ("syntax.json", '{"name": ', ["Expecting value"]),
        ("syntax.toml", "name = \n", ["Invalid value"]),
        ("type.json", '{"seed": "abc"}', ["seed", "valid integer"]),
    ],
)
def test_bad_config_exits_2_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, needles: list[str]
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert main(["serve", "--port", "0", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("waterfall-fakes: bad config: ")
    for needle in needles:
        assert needle in captured.err
    # the problems by key, in words: no pydantic dump (type tags, the values, a URL)
    for dump in ("pydantic", "http", "input_value", "[type="):
        assert dump not in captured.err


def test_missing_config_file_and_bad_script_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--config", str(tmp_path / "absent.json")]) == 2
    assert "absent.json" in capsys.readouterr().err
    assert main(["serve", "--script", "ok", "--script", "cut:bites=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("waterfall-fakes: bad config: ")
    assert "bites" in err


def test_busy_port_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"waterfall-fakes: cannot listen on 127.0.0.1:{port}: ")


# -- serve as a real process -----------------------------------------------------------------------


@contextmanager
def serve(*args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run ``waterfall-fakes serve --port 0 ARGS``; yield its root URL and the process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "waterfall_fakes.cli", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "no URL line within 20 s"
        line = proc.stdout.readline().rstrip("\n")
        match = URL_LINE.match(line)
        assert match, f"first line is not the URL: {line!r}"
        yield line.removesuffix("/v1"), proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    return proc.returncode, err


@pytest.mark.loopback
def test_serve_with_flags_answers_like_the_same_fake_in_process() -> None:
    flags = ["--seed", "9", "--name", "cli-fake", "--script", "status:code=502", "--script", "ok"]
    twin = FakeProvider(seed=9, name="cli-fake", script=["status:code=502", "ok"], cycle=True)
    local = httpx.Client(transport=FakeTransport(twin), base_url="http://fake/v1")
    with serve(*flags, "--cycle") as (root, proc), httpx.Client(base_url=root + "/v1") as c:
        health = httpx.get(root + "/health")
        assert health.json() == {"status": "ok", "name": "cli-fake"}
        answers = [c.post(CHAT, content=BODY) for _ in range(3)]
        expected = [local.post(CHAT, content=BODY) for _ in range(3)]
        assert [a.status_code for a in answers] == [502, 200, 502]
        assert [a.content for a in answers] == [e.content for e in expected]
        assert answers[1].headers["x-fake-name"] == "cli-fake"
        code, err = stop(proc)
    assert code == 0
    assert "Traceback" not in err


@pytest.mark.loopback
def test_serve_with_json_config_and_a_hanging_request_still_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "fake.json"
    path.write_text(json.dumps({"name": "json-fake", "script": ["hang"]}), encoding="utf-8")
    with serve("--config", str(path)) as (root, proc):
        assert httpx.get(root + "/health").json()["name"] == "json-fake"
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(root + "/v1" + CHAT, content=BODY, timeout=httpx.Timeout(5, read=0.1))
        port = int(root.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: fake\r\n"
                b"x-fake-behaviour: hang\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
            )
            assert httpx.post(root + "/v1" + CHAT, content=BODY).status_code == 200
            code, err = stop(proc)
            assert raw.recv(1024) == b""  # closed by the shutdown, with no answer
    assert code == 0
    assert "Traceback" not in err


@pytest.mark.loopback
def test_serve_with_toml_config_and_script_flags(tmp_path: Path) -> None:
    path = tmp_path / "fake.toml"
    path.write_text(
        'name = "toml-fake"\nscript = ["status:code=503"]\n[[models]]\nid = "only-model"\n',
        encoding="utf-8",
    )
    body = BODY.replace(b"fake-small", b"only-model")
    with serve("--config", str(path), "--script", "insufficient_balance") as (root, proc):
        models = httpx.get(root + "/v1/models").json()["data"]
        assert [m["id"] for m in models] == ["only-model"]
        statuses = [httpx.post(root + "/v1" + CHAT, content=body).status_code for _ in range(2)]
        assert statuses == [402, 200]  # --script replaces the file's script
        assert httpx.get(root + "/health").json()["name"] == "toml-fake"
        code, _ = stop(proc)
    assert code == 0


@pytest.mark.loopback
def test_serve_with_a_bad_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"limits": {"requests": 1, "burst": 2}}', encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "waterfall_fakes.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "limits.burst" in done.stderr
