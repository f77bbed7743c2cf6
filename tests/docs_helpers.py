"""Helpers for the tests that hold the docs to the code: run an example, read a page's tables."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"

TTFB = re.compile(r"(?:\d+\.\d|-) {2,}(?:\d+\.\d|-)$")
TTFB_COLUMNS = len("  ttfb p50 ms  ttfb p95 ms")


def run_example(name: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``docs/examples/NAME`` as a script (its asserts included); return what it printed."""
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return capsys.readouterr().out


def section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading."""
    return text.split(f"\n{heading}\n", 1)[1].split("\n#", 1)[0]


def rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the table rows under ``heading``, its header row and rule left out."""
    lines = section(text, heading).splitlines()
    found = [
        line
        for line, after in zip(lines, [*lines[1:], ""], strict=True)
        if line.startswith("| ") and not after.startswith("|---") and not line.startswith("|---")
    ]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in found]


def table(page: Path, heading: str) -> list[list[str]]:
    """:func:`rows` of a page file."""
    return rows(page.read_text(encoding="utf-8"), heading)


def code(cell: str) -> str:
    """The first code span of a table cell."""
    match = re.search(r"`([^`]+)`", cell)
    assert match, cell
    return match.group(1)


def without_ttfb(text: str) -> list[str]:
    """The lines of a usage table with its time-to-first-byte values, which differ from run to
    run, as ``<ms>`` (a ``-``, no value, is kept): they are right-aligned in the last two columns,
    as wide as their headers."""
    lines = []
    for line in text.splitlines():
        if TTFB.search(line):
            values = re.sub(r"\d+\.\d", "<ms>", line[-TTFB_COLUMNS:]).split()
            line = " ".join([line[:-TTFB_COLUMNS], *values])
        lines.append(line)
    return lines
