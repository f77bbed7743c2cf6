"""Getting started's path, run as the page tells it: two fakes from the command line, the
page's config, its FastAPI app on uvicorn, its OpenAI SDK client, and ``waterfall-asgi usage``
on the ledger. Each output must be what the page shows (the fakes' ports, fixed on the page, are
free ones here)."""

from __future__ import annotations

import re
import runpy
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from waterfall_asgi.cli import main
from waterfall_fakes import LoopbackServer

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "getting-started.md"
EXAMPLES = ROOT / "docs" / "examples"
TEXT = PAGE.read_text(encoding="utf-8")


def shown_after(command: str) -> list[str]:
    """The lines the page shows right after ``$ COMMAND``, up to the next prompt or fence."""
    block = TEXT.split(f"$ {command}\n", 1)[1].split("```", 1)[0]
    return [line for line in block.split("$ ", 1)[0].splitlines() if line]


def fakes_commands() -> list[list[str]]:
    """The page's ``waterfall-fakes serve`` commands, as arguments."""
    found = re.findall(r"^\$ (waterfall-fakes serve .*?)(?: &)?$", TEXT, re.MULTILINE)
    assert len(found) == 2, found
    return [re.findall(r"'[^']*'|\S+", line) for line in found]


@contextmanager
def fake(arguments: list[str]) -> Iterator[tuple[int, int]]:
    """Run a page's ``waterfall-fakes serve`` command on a free port; yield the page's port
    and the one it got."""
    script = Path(sys.executable).with_name("waterfall-fakes")
    args = [a.strip("'") for a in arguments[2:]]
    port_at = args.index("--port") + 1
    page_port = int(args[port_at])
    args[port_at] = "0"
    process = subprocess.Popen([str(script), "serve", *args], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/v1", url)
        assert match, url
        yield page_port, int(match.group(1))
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.loopback
def test_getting_started_mounts_the_router_and_shows_the_fall_through_and_the_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with ExitStack() as stack:
        ports = [stack.enter_context(fake(c)) for c in fakes_commands()]
        config = (EXAMPLES / "first_router.toml").read_text(encoding="utf-8")
        for page_port, port in ports:
            assert f":{page_port}/v1" in config
            config = config.replace(f":{page_port}/v1", f":{port}/v1")
        (tmp_path / "router.toml").write_text(config, encoding="utf-8")
        shutil.copy(EXAMPLES / "first_router_app.py", tmp_path / "app.py")
        app = runpy.run_path(str(tmp_path / "app.py"))["app"]
        client = runpy.run_path(str(EXAMPLES / "first_router_client.py"))["main"]
        with LoopbackServer(app, lifespan="on") as server:  # as `uvicorn app:app`
            capsys.readouterr()
            client(server.url)
            said = capsys.readouterr().out
    assert said.splitlines() == shown_after("python client.py")
    assert main(["usage", "--config", "router.toml"]) == 0
    table = capsys.readouterr().out.splitlines()
    shown = shown_after("waterfall-asgi usage --config router.toml")
    # everything but the times to first byte, which are measured
    cut = shown[1].index("ttfb p50 ms")
    assert [line[:cut] for line in table] == [line[:cut] for line in shown]
    assert len(table) == len(shown)
