"""``waterfall-asgi serve`` as a real process: it starts, serves, and stops on SIGTERM; a bad
config is refused with exit status 1 and the wrong key named.

``--port 0`` works: uvicorn binds a free port and says which one in its startup line
(``Uvicorn running on http://127.0.0.1:PORT``, on stderr at the default log level).
"""

from __future__ import annotations

import gc
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest

import waterfall_asgi
from waterfall_asgi import GC_YOUNG_THRESHOLD, tune_gc
from waterfall_asgi.cli import main
from waterfall_fakes import FakeProvider, FakeServer

RUNNING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+) ")
ENV_KEY = "WF_SERVE_CLI_TEST_KEY"


def command() -> list[str]:
    script = Path(sys.executable).with_name("waterfall-asgi")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "waterfall_asgi.cli"]  # pragma: no cover - no console script


def _pump(stream: IO[str], lines: list[str], seen: queue.Queue[str]) -> None:
    for line in stream:
        lines.append(line.rstrip("\n"))
        seen.put(line)


@dataclass
class Served:
    """What one run of ``waterfall-asgi serve`` did, from start to SIGTERM."""

    port: int
    health: httpx.Response
    models: httpx.Response
    chat: httpx.Response
    upstream: FakeProvider
    stderr: list[str]
    stdout: list[str]
    returncode: int


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    upstream = FakeProvider(name="up", api_key="key-from-env", reply_words=3)
    with FakeServer(upstream) as fake:
        config = tmp_path_factory.mktemp("serve") / "router.toml"
        config.write_text(
            f'[providers.up]\nbase_url = "{fake.url}"\napi_key_env = "{ENV_KEY}"\n\n'
            '[chains]\nfast = ["up/fake-small"]\n',
            encoding="utf-8",
        )
        proc = subprocess.Popen(
            [*command(), "serve", "--config", str(config), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, ENV_KEY: "key-from-env"},
            cwd=config.parent,  # where its usage ledger (the default SQLite file) goes
        )
        assert proc.stdout is not None
        assert proc.stderr is not None
        stderr: list[str] = []
        stdout: list[str] = []
        seen: queue.Queue[str] = queue.Queue()
        readers = [
            threading.Thread(target=_pump, args=(proc.stderr, stderr, seen), daemon=True),
            threading.Thread(target=_pump, args=(proc.stdout, stdout, queue.Queue()), daemon=True),
        ]
        for reader in readers:
            reader.start()
        try:
            port = None
            for _ in range(100):  # each get waits at most 0.2 s: 20 s in all
                try:
                    line = seen.get(timeout=0.2)
                except queue.Empty:
                    if proc.poll() is not None:
                        break
                    continue
                match = RUNNING.search(line)
                if match:
                    port = int(match.group(1))
                    break
            assert port is not None, "\n".join(stderr)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                health = client.get("/health")
                models = client.get("/v1/models")
                chat = client.post(
                    "/v1/chat/completions",
                    json={"model": "fast", "messages": [{"role": "user", "content": "Hi"}]},
                )
            proc.send_signal(signal.SIGTERM)
            returncode = proc.wait(timeout=10)
        finally:
            if proc.poll() is None:  # pragma: no cover - only when the test already failed
                proc.kill()
                proc.wait(timeout=10)
            proc.stdout.close()
            proc.stderr.close()
        for reader in readers:
            reader.join(10)
        yield Served(port, health, models, chat, upstream, stderr, stdout, returncode)


@pytest.mark.loopback
def test_serve_on_port_0_answers(served: Served) -> None:
    assert served.port > 0
    assert served.health.json() == {"status": "ok"}
    assert [m["id"] for m in served.models.json()["data"]] == ["fast", "fake-small"]
    assert served.chat.status_code == 200
    assert served.chat.headers["x-waterfall-attempts"] == "up/fake-small 200"
    # The provider key came from the environment variable the config names.
    (seen,) = served.upstream.requests
    assert seen.headers["authorization"] == "Bearer key-from-env"


@pytest.mark.loopback
def test_serve_shuts_down_gracefully_on_sigterm(served: Served) -> None:
    messages = [line.removeprefix("INFO:").strip() for line in served.stderr]
    lifecycle = [
        "Waiting for application startup.",
        "Application startup complete.",
        "Shutting down",
        "Waiting for application shutdown.",
        "Application shutdown complete.",
    ]
    assert [m for m in messages if m in lifecycle] == lifecycle
    assert re.fullmatch(r"Finished server process \[\d+\]", messages[-1])
    assert not any(line.startswith(("ERROR", "Traceback")) for line in served.stderr)
    # uvicorn's access log (on stdout, after the URL line) saw the three requests.
    logged = served.stdout[1:]
    access = [re.search(r'"(\S+ \S+) HTTP/1\.1" (\d+)', line) for line in logged]
    assert [m.groups() if m else line for m, line in zip(access, logged, strict=True)] == [
        ("GET /health", "200"),
        ("GET /v1/models", "200"),
        ("POST /v1/chat/completions", "200"),
    ]


@pytest.mark.loopback
def test_serve_prints_its_base_url_first_on_stdout(served: Served) -> None:
    # what a script reads to find the router: the port it was given with --port 0
    assert served.stdout[0] == f"http://127.0.0.1:{served.port}/v1"


def test_serve_options_say_what_they_do(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--host HOST the address to listen on (default: 127.0.0.1" in text
    assert "--port PORT the TCP port (default: 8000; 0: a free one, printed on stdout)" in text
    assert "the first line on stdout is its base URL" in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"waterfall-asgi {waterfall_asgi.__version__}\n"


@pytest.mark.loopback
def test_serve_exits_0_after_sigterm(served: Served) -> None:
    assert served.returncode == 0


# -- bad configs --------------------------------------------------------------------------------
BAD_CONFIGS = {
    "unknown-provider": (
        '[providers.a]\nbase_url = "http://127.0.0.1:9/v1"\n[chains]\nfast = ["zz/m"]\n',
        ["chains.fast.0: unknown provider 'zz'"],
    ),
    "missing-env": (
        '[providers.a]\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "WF_CLI_MISSING"\n',
        ["providers.a.api_key_env: environment variable WF_CLI_MISSING is not set"],
    ),
    "bad-prefix": (
        'prefix = "v1"\n[providers.a]\nbase_url = "http://127.0.0.1:9/v1"\n',
        ["prefix: must start with '/'"],
    ),
    "typo": (
        '[providers.a]\nbase_ur = "http://127.0.0.1:9/v1"\n',
        [
            "providers.a.base_url: a required setting, not given",
            "providers.a.base_ur: unknown setting (did you mean 'base_url'?)",
        ],
    ),
    "bad-url": (
        '[providers.a]\nbase_url = "127.0.0.1:9/v1"\n',
        ["providers.a.base_url: must start with http:// or https://"],
    ),
}


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_serve_refuses_a_bad_config(
    name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WF_CLI_MISSING", raising=False)
    text, problems = BAD_CONFIGS[name]
    path = tmp_path / "router.toml"
    path.write_text(text, encoding="utf-8")
    assert main(["serve", "--config", str(path), "--port", "0"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert [line.strip() for line in err.splitlines()] == [f"{path}: invalid config", *problems]


def test_serve_refuses_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.toml"
    assert main(["serve", "--config", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"{path}: invalid config\n  {path}: cannot read: No such file or directory\n"
    )


def test_serve_with_a_bad_config_exits_1_as_a_process(tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    path.write_text(BAD_CONFIGS["unknown-provider"][0], encoding="utf-8")
    done = subprocess.run(
        [*command(), "serve", "--config", str(path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == f"{path}: invalid config\n  chains.fast.0: unknown provider 'zz'\n"


@pytest.fixture
def gc_state() -> Iterator[None]:
    """Put the collector back as it was (tune_gc changes the whole process)."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("gc_state")
def test_tune_gc_freezes_what_is_loaded_and_raises_the_young_threshold() -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
    gc.set_threshold(50_000, 5, 5)  # a higher threshold of the application's own is kept
    tune_gc()
    assert gc.get_threshold() == (50_000, 5, 5)


def test_serve_tunes_the_collector_before_it_serves(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import uvicorn

    import waterfall_asgi.app

    calls: list[str] = []
    monkeypatch.setattr(waterfall_asgi.app, "tune_gc", lambda: calls.append("tune_gc"))
    monkeypatch.setattr(uvicorn.Server, "run", lambda *_, **__: calls.append("run"))
    config = tmp_path / "router.toml"
    config.write_text(
        '[providers.a]\nbase_url = "http://127.0.0.1:9/v1"\n[chains]\nfast = ["a/m"]\n'
        "[ledger]\npath = ''\n"
    )
    assert main(["serve", "--config", str(config), "--port", "0"]) == 3  # (never started)
    assert calls == ["tune_gc", "run"]
