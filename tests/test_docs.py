"""The documentation cannot rot: its examples run, its includes resolve, its tables match the code.

Python examples (``docs/examples/*.py``) run in-process and carry their own asserts; the pytest
examples run under pytester; the shell examples run with bash against the real
``waterfall-fakes`` command and must print what the pages show.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import re
import runpy
import socket
import subprocess
import sys
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import waterfall_fakes
from waterfall_fakes import Behaviour, Dialect
from waterfall_fakes.cli import main as fakes_main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
PAGES = sorted(DOCS.rglob("*.md"))
INCLUDE = re.compile(r'^[ \t]*--8<--[ \t]+"([^"]+)"[ \t]*$')

# (first_router_*.py, an app and a client of a server, are run by test_docs_getting_started.py)
PYTHON_EXAMPLES = sorted(
    p for p in EXAMPLES.glob("*.py") if not p.name.startswith(("pytest_", "first_router_"))
)
PYTEST_EXAMPLES = sorted(EXAMPLES.glob("pytest_*.py"))
SHELL_EXAMPLES = sorted(EXAMPLES.glob("*.sh"))


def includes() -> dict[Path, list[str]]:
    """Every ``--8<--`` include of every page."""
    found: dict[Path, list[str]] = {}
    for page in PAGES:
        for line in page.read_text(encoding="utf-8").splitlines():
            match = INCLUDE.match(line)
            if match:
                found.setdefault(page, []).append(match.group(1))
    return found


def example_files() -> set[Path]:
    return {
        p
        for p in EXAMPLES.iterdir()
        if p.is_file() and p.suffix in {".py", ".sh", ".txt", ".toml", ".json"}
    }


# -- includes ----------------------------------------------------------------------------------
def test_every_include_points_at_an_existing_file() -> None:
    found = includes()
    assert found, "no page includes anything"
    for page, paths in found.items():
        for path in paths:
            assert (ROOT / path).is_file(), f"{page.relative_to(ROOT)} includes missing {path}"


def test_no_include_line_is_malformed() -> None:
    # e.g. a code formatter rewriting `--8<-- "x.py"` as `--8 < --"x.py"` inside a python fence
    for page in PAGES:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"-+ ?8 ?<", line) and "<!--" not in line:
                assert INCLUDE.match(line), f"{page.relative_to(ROOT)}:{number}: {line!r}"


def test_every_example_is_included_by_a_page() -> None:
    included = {(ROOT / path).resolve() for paths in includes().values() for path in paths}
    assert example_files() - included == set()


# -- the Python examples -----------------------------------------------------------------------
EXPECTED_OUTPUT = {
    "in_process.py": (
        "hang -> httpx.ReadTimeout after the 0.1 s read timeout\n"
        "cut -> httpx.RemoteProtocolError after 100 bytes\n"
    ),
    "asgi_app.py": "cut -> ConnectionCut raised mid-body; an ASGI server aborts the connection\n",
    "behaviours_tour.py": "every behaviour does what the table says\n",
    "scripts.py": None,  # the 400's message, from pydantic: checked below
    "fake_dialects.py": (
        "/v1/responses 200 5 12\n/v1/responses 200 5 12\n/v1/messages 200 5 12\n"
        "/v1/messages 200 5 12\n/v1/messages 200 5 3\n/v1/messages 529 None None\n"
    ),
    "first_server.py": re.compile(r"serving on http://127\.0\.0\.1:\d+/v1\n"),
    # the router's dialect pages show what these print
    **{
        name: (EXAMPLES / name).with_suffix(".txt").read_text(encoding="utf-8")
        for name in ("router_messages.py", "router_responses.py")
    },
}


def _example_params() -> list[Any]:
    params = []
    for path in PYTHON_EXAMPLES:
        loopback = "FakeServer" in path.read_text(encoding="utf-8")
        marks = [pytest.mark.loopback] if loopback else []
        params.append(pytest.param(path, marks=marks, id=path.name))
    return params


@pytest.mark.parametrize("path", _example_params())
def test_python_example_runs(
    path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    names = runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    expected = EXPECTED_OUTPUT.get(path.name)
    if isinstance(expected, str):
        assert out == expected
    elif isinstance(expected, re.Pattern):
        assert expected.fullmatch(out), out
    if path.name == "scripts.py":
        assert out.startswith("Bad x-fake-behaviour header: 'nap': kind: ")
    if path.name == "dialects.py":  # the page's table of dialects is complete
        assert list(names["EXPECTED"]) == list(typing.get_args(Dialect))
    if path.name in ("first_fake.py", "server_openai.py"):
        assert len(out.split()) == 12  # the reply's words


@pytest.mark.parametrize("path", PYTEST_EXAMPLES, ids=lambda p: p.name)
def test_pytest_example_passes(path: Path, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(**{f"test_{path.stem}": path.read_text(encoding="utf-8")})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", "-q")
    count = len(re.findall(r"^def test_", path.read_text(encoding="utf-8"), re.MULTILINE))
    result.assert_outcomes(passed=count)


# -- the shell examples ------------------------------------------------------------------------
def _normalize(text: str) -> str:
    text = text.replace("\r\n", "\n")
    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)
    return re.sub(r"(?im)^date: .*$", "date: DATE", text)


def _run_shell(path: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", str(path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.loopback
@pytest.mark.parametrize("path", SHELL_EXAMPLES, ids=lambda p: p.name)
def test_shell_example_prints_what_the_page_shows(path: Path) -> None:
    out = _run_shell(path)
    shown = path.with_suffix(".txt").read_text(encoding="utf-8")
    assert _normalize(out) == _normalize(shown)
    for port in re.findall(r"127\.0\.0\.1:(\d+)", out):  # every fake it started has stopped
        with socket.socket() as sock:
            sock.settimeout(2)
            with pytest.raises(ConnectionRefusedError):
                sock.connect(("127.0.0.1", int(port)))


def test_the_cli_page_lists_every_serve_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        fakes_main(["serve", "--help"])
    options = set(re.findall(r"(--[a-z][a-z-]+)", capsys.readouterr().out)) - {"--help"}
    page = (DOCS / "fakes" / "cli.md").read_text(encoding="utf-8")
    table = [line for line in page.splitlines() if line.startswith("| `--")]
    documented = {o for line in table for o in re.findall(r"`(--[a-z][a-z-]+)", line)}
    assert documented == options


# -- the behaviour table -----------------------------------------------------------------------
def _table_rows(page: Path, heading: str) -> list[list[str]]:
    text = page.read_text(encoding="utf-8")
    section = text.split(f"\n{heading}\n", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]


def _default_text(value: object) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"`{value}`" if len(value) < 20 else None
    if isinstance(value, int | float):
        return str(value)
    return None


def test_the_behaviour_table_lists_every_behaviour_and_parameter() -> None:
    rows = _table_rows(DOCS / "fakes" / "index.md", "## Behaviours")
    documented = {row[0].strip("`"): row[1] for row in rows}
    classes = typing.get_args(typing.get_args(Behaviour)[0])
    kinds = {cls.model_fields["kind"].default: cls for cls in classes}
    assert list(documented) == list(kinds)
    for kind, cls in kinds.items():
        fields = {name: f for name, f in cls.model_fields.items() if name != "kind"}
        listed = re.sub(r"\([^)]*\)", "", documented[kind])  # drop the defaults
        assert {item.strip().strip("`") for item in listed.split(",") if item.strip()} == set(
            fields
        )
        for name, field in fields.items():
            default = _default_text(field.default)
            if default is not None:
                assert f"`{name}` ({default}" in documented[kind], (kind, name, default)


def test_the_behaviour_tour_exercises_every_behaviour() -> None:
    tour = (EXAMPLES / "behaviours_tour.py").read_text(encoding="utf-8")
    classes = typing.get_args(typing.get_args(Behaviour)[0])
    missing = [c.model_fields["kind"].default for c in classes]
    missing = [kind for kind in missing if f'chat("{kind}' not in tour]
    assert missing == []


def test_the_dialect_table_lists_every_dialect() -> None:
    rows = _table_rows(DOCS / "fakes" / "index.md", "### 429 header dialects")
    assert [row[0].strip("`") for row in rows] == list(typing.get_args(Dialect))


# -- the API reference -------------------------------------------------------------------------
def test_the_reference_covers_every_public_module() -> None:
    page = (DOCS / "reference" / "fakes.md").read_text(encoding="utf-8")
    rendered = set(re.findall(r"^::: (waterfall_fakes[\w.]*)$", page, re.MULTILINE))
    modules = {
        f"waterfall_fakes.{m.name}"
        for m in pkgutil.iter_modules(waterfall_fakes.__path__)
        if not m.name.startswith("_")
    }
    assert rendered == modules | {"waterfall_fakes"}


@pytest.mark.parametrize(
    "module",
    sorted(
        m.name
        for m in pkgutil.iter_modules(waterfall_fakes.__path__)
        if m.name not in {"cli", "pytest_plugin", "strategies", "respx"}
    ),
)
def test_the_reference_page_is_right_that_names_are_exported(module: str) -> None:
    mod = importlib.import_module(f"waterfall_fakes.{module}")
    assert set(mod.__all__) <= set(waterfall_fakes.__all__)


# -- the Griffe extension that renders the docstrings ------------------------------------------
def _extension() -> ModuleType:
    path = DOCS / "extensions" / "rst_docstrings.py"
    spec = importlib.util.spec_from_file_location("rst_docstrings", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("text", "markdown"),
    [
        (
            "Intro.\n\n>>> f([1])\n['a', 'b']\n\nAfter.",
            "Intro.\n\n```pycon\n>>> f([1])\n['a', 'b']\n```\n\nAfter.",
        ),
        (
            "Like this::\n\n    a: b\n    c\n\nDone.",
            "Like this:\n\n```\na: b\nc\n```\n\nDone.",
        ),
        ("::\n\n    x\n", "\n\n```\nx\n```\n"),
        (
            "- item, e.g.::\n\n      @mark\n      def f(): ...\n",
            "- item, e.g.:\n\n```\n@mark\ndef f(): ...\n```\n",
        ),
        (
            "See :class:`FakeProvider`, :func:`~a.b.parse`, :attr:`url <pkg.Server.url>`.",
            "See `FakeProvider`, `parse`, `url`.",
        ),
        (
            "Uses `respx <https://example.org/respx/>`_.",
            "Uses [respx](https://example.org/respx/).",
        ),
        ("```python\n>>> kept as it is::\n```", "```python\n>>> kept as it is::\n```"),
        ("No reST here, `code` and ``code``.", "No reST here, `code` and ``code``."),
    ],
)
def test_rst_docstrings_become_markdown(text: str, markdown: str) -> None:
    to_markdown = _extension().to_markdown
    assert to_markdown(text) == markdown
    assert to_markdown(markdown) == markdown  # idempotent


# -- the fakes' README -------------------------------------------------------------------------
README = ROOT / "fakes" / "README.md"
README_BLOCKS = re.findall(
    r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S
)


@pytest.mark.loopback
@pytest.mark.parametrize("index", range(len(README_BLOCKS)))
def test_readme_python_block_runs(index: int, pytester: pytest.Pytester) -> None:
    code = README_BLOCKS[index]
    if "def test_" in code:
        pytester.makepyfile(test_readme=code)
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", "-q")
        result.assert_outcomes(passed=code.count("def test_"))
    else:
        exec(compile(code, f"{README}[{index}]", "exec"), {"__name__": "__readme__"})


def test_the_readme_has_its_python_blocks() -> None:
    assert len(README_BLOCKS) == 3
