"""The page "Fakes in any language's CI": its Node suite runs and prints what the page shows (the
shell suite runs with the other shell examples in test_docs.py), its tables match the code."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from waterfall_fakes import (
    CONDUCT_CHECKS,
    FakeProvider,
    FakeTransport,
    entry_json,
    journal_json,
)
from waterfall_fakes.control import ROUTES

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "fakes" / "ci.md"
EXAMPLES = ROOT / "docs" / "examples"


def table(heading: str) -> list[list[str]]:
    text = PAGE.read_text(encoding="utf-8")
    section = text.split(f"\n{heading}\n", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]


@pytest.mark.loopback
def test_the_node_suite_prints_what_the_page_shows() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the page's Node suite needs node 20+)")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [node, str(EXAMPLES / "ci_node.mjs")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the fake it starts goes with it
    )
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, err
    assert out == (EXAMPLES / "ci_node.txt").read_text(encoding="utf-8")


def test_the_journal_entry_shown_has_every_field() -> None:
    fake = FakeProvider(script=["status:code=503"])
    FakeTransport(fake).handle_request(
        __import__("httpx").Request("POST", "http://fake/v1/chat/completions", json={})
    )
    real = entry_json(fake.requests[0])
    shown = json.loads((EXAMPLES / "journal_entry.json").read_text(encoding="utf-8"))
    assert list(shown) == list(real)
    assert list(shown["timings"]) == list(real["timings"])
    documented = {
        name.strip("`") for row in table("### A journal entry") for name in row[0].split(", ")
    }
    documented = {n.split(".")[-1] for n in documented}
    assert documented >= set(real) - {"timings"}
    assert set(journal_json(fake)) == {"version", "name", "seed", "count", "entries"}


def test_the_control_table_lists_every_route() -> None:
    documented = {row[0].strip("`") for row in table("## The control plane")}
    served = {f"{method} /_fake{path}" for path, methods in ROUTES.items() for method in methods}
    assert documented == served


def test_the_verdict_table_lists_every_check() -> None:
    assert [row[0].strip("`") for row in table("## The conduct verdict")] == list(CONDUCT_CHECKS)


def test_every_verdict_threshold_is_named_on_the_page() -> None:
    from waterfall_fakes import ConductThresholds

    text = PAGE.read_text(encoding="utf-8")
    for name in ConductThresholds.NAMES:
        assert f"--{name.replace('_', '-')}" in text, name
    assert re.search(r"\?min_gap=", text)
