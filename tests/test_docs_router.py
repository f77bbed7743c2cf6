"""The router's doc pages say what the code does: their config files and console output."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from waterfall_asgi import body_retry_hint, load_config, retry_hint
from waterfall_asgi.cli import main

DOCS = Path(__file__).resolve().parents[1] / "docs"


def console_output(page: str, command: str) -> list[str]:
    """The lines a page shows right after ``$ COMMAND``, up to the next prompt or fence end."""
    text = (DOCS / page).read_text(encoding="utf-8")
    block = text.split(f"$ {command}\n", 1)[1].split("```", 1)[0]
    return [line for line in block.split("$ ", 1)[0].splitlines() if line]


def test_the_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-docs-1")
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-docs-2")
    config = load_config(DOCS / "examples" / "router.toml")
    assert [d.key for d in config.chains["fast"]][1] == "openrouter/openai/gpt-4o-mini"
    assert config.providers["openai"].timeouts.first_byte == 30


@pytest.mark.parametrize(
    ("page", "name", "code"),
    [("router/index.md", "router.toml", 0), ("router/configuration.md", "broken.toml", 1)],
)
def test_check_config_prints_what_the_page_shows(
    page: str,
    name: str,
    code: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-docs-1")
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-docs-2")
    monkeypatch.chdir(DOCS / "examples")
    assert main(["check-config", name]) == code
    out = capsys.readouterr()
    assert (out.out + out.err).splitlines() == console_output(
        page, f"waterfall-asgi check-config {name}"
    )


def test_the_errors_page_lists_every_code_the_router_uses() -> None:
    page = (DOCS / "router" / "errors.md").read_text(encoding="utf-8")
    source = "".join(
        p.read_text(encoding="utf-8") for p in (DOCS.parent / "src" / "waterfall_asgi").glob("*.py")
    )
    used = set(re.findall(r'code="([a-z_]+)"', source)) | {"all_providers_exhausted"}
    used.discard("stream_interrupted")  # an SSE event, documented on the routing page
    documented = set(re.findall(r"`([a-z_]+)`", page))
    assert used <= documented


def test_the_readme_snippet_mounts_the_router(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    readme = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-docs-1")
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-docs-2")
    (tmp_path / "router.toml").write_text(
        (DOCS / "examples" / "router.toml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(block, "README.md", "exec"), namespace)
    app = namespace["app"]
    stack = app.build_middleware_stack()  # type: ignore[attr-defined]
    while not hasattr(stack, "config") and hasattr(stack, "app"):
        stack = stack.app
    assert sorted(stack.config.chains) == ["fast", "smart"]


def test_explain_prints_what_the_page_shows_for_a_chain(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-docs-1")
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-docs-2")
    monkeypatch.chdir(DOCS / "examples")
    command = "waterfall-asgi explain --config router.toml chain_request.json"
    assert main(command.split()[1:]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    assert out.out.splitlines() == console_output("router/cost.md", command)


def test_every_hint_the_routing_page_lists_is_read() -> None:
    text = (DOCS / "router" / "routing.md").read_text(encoding="utf-8")
    section = text.split("## How long an entry cools down", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) == 6
    for row in rows:
        name_cell, example_cell = row.split("|")[1:3]
        name = re.findall(r"`([^`]+)`", name_cell)[0].lower()
        name = re.sub(r"\{([^,}]+)[^}]*\}", r"\1", name)  # {requests,tokens,...}: the first
        for example in re.findall(r"`([^`]+)`", example_cell):
            hint = retry_hint({name: example}, 1_790_000_000.0)
            assert hint is not None, (name, example)
    body = section.split("```json\n", 1)[1].split("```", 1)[0]
    assert body_retry_hint(body.encode()) == 30.0
