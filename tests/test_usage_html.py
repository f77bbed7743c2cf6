"""``waterfall-asgi usage --html``: one self-contained page (nothing loaded from anywhere), the
same from an SQLite and a PostgreSQL ledger, drawn by a real headless browser (Debian's
chromium, installed here where it is missing; skipped with the reason where it cannot be).

``WATERFALL_UPDATE_SCREENSHOT=1`` also writes the browser's screenshot to the docs
(``docs/images/usage-report.png``)."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from usage_samples import sample_records

from waterfall_asgi import PostgresLedger, SQLiteLedger, UsageRecord
from waterfall_asgi.cli import main
from waterfall_asgi.usage_html import render_html

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "images" / "usage-report.png"
WINDOW = (1000, 1640)


def _install_chromium() -> str | None:
    """Where chromium is, installing Debian's package first if it is missing and this can."""
    found = shutil.which("chromium")
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        try:
            subprocess.run(command, env=env, capture_output=True, timeout=900, check=True)
        except (subprocess.SubprocessError, OSError):
            return None
    return shutil.which("chromium")


@pytest.fixture(scope="session")
def chromium() -> str:
    found = _install_chromium()
    if found is None:
        pytest.skip(
            "no chromium, and it cannot be installed here (needs root and apt-get: "
            "apt-get install chromium)"
        )
    return found


def _browse(
    chromium: str, page: Path, profile: Path, *action: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            *action,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


async def _sqlite_ledger(path: Path, records: list[UsageRecord]) -> None:
    ledger = SQLiteLedger(path)
    await ledger.open()
    for record in records:
        await ledger.save(record)
    await ledger.close()


@pytest.fixture
def ledger_file(tmp_path: Path) -> Path:
    import asyncio

    path = tmp_path / "usage.db"
    asyncio.run(_sqlite_ledger(path, sample_records()))
    return path


def test_the_page_is_self_contained(ledger_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert main(["usage", "--db", str(ledger_file), "--html", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "<script" not in page
    assert not re.search(r"(?i)(src|href)\s*=|url\(|@import|https?://", page)
    assert page.count("<svg") == 4  # spend (one unit), tokens, rates, TTFB
    for title in ("Spend by provider and model (usd_micro)", "Tokens by provider and model"):
        assert title in page
    for series in ("openai/gpt-4o-mini", "groq/llama-3.1-8b", "openrouter/claude-3.5-sonnet"):
        assert series in page
    assert "600 requests" in page


def test_the_browser_draws_it(
    chromium: str,
    ledger_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ledger_file.parent)
    assert main(["usage", "--db", ledger_file.name, "--html", "report.html"]) == 0
    said = "report.html: the usage report of 600 requests from usage.db\n"
    assert capsys.readouterr().out == said
    out = tmp_path / "report.html"
    dom = _browse(chromium, out, tmp_path / "profile", "--dump-dom").stdout
    assert dom.count("<svg") == 4
    bars = len(re.findall(r"<rect ", dom))
    assert bars == out.read_text(encoding="utf-8").count("<rect ")  # every one parsed
    assert bars > 2 * 24  # spend and tokens: a day in hourly buckets
    assert dom.count("<polyline") == 5  # fall-through and error rates; p50, p95, p99
    shot = tmp_path / "report.png"
    _browse(chromium, out, tmp_path / "profile", f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == WINDOW
    assert len(data) > 50_000  # charts, not a blank page (a blank one is a few KiB)
    if os.environ.get("WATERFALL_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copy(shot, SCREENSHOT)


def test_a_postgresql_ledger_gives_the_same_page(
    pg_url: str, ledger_file: Path, tmp_path: Path
) -> None:
    import asyncio

    async def fill() -> None:
        ledger = PostgresLedger(pg_url)
        await ledger.open()
        for record in sample_records():
            await ledger.save(record)
        await ledger.close()

    asyncio.run(fill())
    from_pg, from_sqlite = tmp_path / "pg.html", tmp_path / "sqlite.html"
    assert main(["usage", "--db", pg_url, "--html", str(from_pg)]) == 0
    assert main(["usage", "--db", str(ledger_file), "--html", str(from_sqlite)]) == 0

    def body(path: Path) -> str:  # all but the line naming the source
        return re.sub(r'<p class="meta">[^·]*·', "", path.read_text(encoding="utf-8"))

    assert body(from_pg) == body(from_sqlite)


def test_an_empty_ledger_says_so() -> None:
    page = render_html([], source="usage.db")
    assert "usage.db: no requests recorded." in page


def test_since_limits_the_page(ledger_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    records = sample_records()
    moment = (records[299].started_at + records[300].started_at) / 2
    iso = datetime.fromtimestamp(moment, UTC).isoformat()
    assert main(["usage", "--db", str(ledger_file), "--html", str(out), "--since", iso]) == 0
    assert "· 300 requests ·" in out.read_text(encoding="utf-8")


def test_a_missing_ledger_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.html"
    assert main(["usage", "--db", str(tmp_path / "none.db"), "--html", str(out)]) == 1
    assert not out.exists()
    assert capsys.readouterr().err
