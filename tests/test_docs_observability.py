"""The Observability page: its example prints what the page shows, its config passes
check-config, and its tables list exactly the metrics and log fields the code has."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

from waterfall_asgi import METRIC_NAMES, REQUEST_FIELDS
from waterfall_asgi.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "router" / "observability.md"
EXAMPLES = ROOT / "docs" / "examples"


def test_the_example_prints_what_the_page_shows(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EXAMPLES / "observability.py"), run_name="__main__")
    shown = (EXAMPLES / "observability.txt").read_text(encoding="utf-8")
    assert capsys.readouterr().out == shown


def test_the_config_passes_check_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert main(["check-config", str(EXAMPLES / "observability.toml")]) == 0
    assert "OK" in capsys.readouterr().out


def test_the_metric_table_lists_every_metric_and_no_other() -> None:
    text = PAGE.read_text(encoding="utf-8")
    section = text.split("### The metrics", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `(waterfall_[a-z_]+)` \|", section, re.MULTILINE)
    assert listed == list(METRIC_NAMES)


def test_the_log_fields_are_listed_in_order() -> None:
    text = PAGE.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `id` … `error` |"))
    listed = re.findall(r"`([a-z_]+)`", row.split("|")[2])
    assert ["method", *listed] == list(REQUEST_FIELDS)


def _documented_labels() -> dict[str, set[str]]:
    text = PAGE.read_text(encoding="utf-8")
    section = text.split("### The metrics", 1)[1].split("\n## ", 1)[0]
    labels = {}
    for name, cell in re.findall(
        r"^\| `(waterfall_[a-z_]+)` \| [a-z]+ \| ([^|]*)\|", section, re.M
    ):
        labels[name] = set(re.findall(r"`([a-z_]+)`", cell))
    return labels


def test_the_grafana_dashboard_uses_only_documented_metrics_and_labels() -> None:
    import json

    dashboard = json.loads((EXAMPLES / "grafana-dashboard.json").read_text(encoding="utf-8"))
    documented = _documented_labels()
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 12
    used = set()
    for expr in exprs:
        names = re.findall(r"\b(waterfall_[a-z_]+)", expr)
        assert names, expr
        for name in names:
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            assert family in documented, (name, expr)
            used.add(family)
        allowed = set().union(*(documented[re.sub(r"_(bucket|sum|count)$", "", n)] for n in names))
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (x.strip() for x in group.split(",")):
                assert label in allowed | {"le"}, (label, expr)
    assert used == set(METRIC_NAMES)  # every metric has a panel
