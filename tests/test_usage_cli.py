"""``waterfall-asgi usage``: a ledger filled through SQLiteLedger, aggregated to exact numbers."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from waterfall_asgi.cli import main
from waterfall_asgi.ledger import UsageRecord
from waterfall_asgi.ledger_sqlite import LedgerError, SQLiteLedger
from waterfall_asgi.usage_report import UsageReport, parse_since, read_usage

CHAT = "/v1/chat/completions"
NOW = time.time()


def rec(
    id: str,
    ago: float,
    provider: str | None,
    status: str = "success",
    *,
    upstream: str | None = None,
    model: str = "fast",
    route: str = CHAT,
    tokens: tuple[int, int] | None = None,
    cost: tuple[int, str] | None = None,
    reference: int | None = None,
    ttfb: float | None = None,
) -> UsageRecord:
    """A record started ``ago`` seconds before NOW."""
    return UsageRecord.from_dict(
        {
            "id": id,
            "started_at": NOW - ago,
            "route": route,
            "model": model,
            "provider": provider,
            "upstream_model": upstream,
            "status": status,
            "prompt_tokens": tokens[0] if tokens else None,
            "completion_tokens": tokens[1] if tokens else None,
            "total_tokens": sum(tokens) if tokens else None,
            "cost": cost[0] if cost else None,
            "cost_unit": cost[1] if cost else None,
            "reference_cost": reference,
            "ttfb_ms": ttfb,
        }
    )


RECORDS = [
    rec("old", 3 * 86400, "a", upstream="m1", tokens=(1000, 100), cost=(1000, "msat"), ttfb=1000.0),
    rec("a1", 600, "a", upstream="m1", tokens=(100, 20), cost=(157, "msat"), ttfb=100.0),
    rec("a2", 500, "a", upstream="m2", tokens=(200, 30), cost=(300, "msat"), ttfb=300.0),
    rec("a3", 400, "a", "upstream_error", upstream="m1", ttfb=200.0),
    rec(
        "b1",
        300,
        "b",
        upstream="m3",
        route="/v1/completions",
        tokens=(10, 5),
        cost=(7, "usd_micro"),
        ttfb=50.0,
    ),
    rec("b2", 200, "b", "pending", upstream="m3", ttfb=80.0),
    rec("x1", 100, None, "exhausted", model="cheap"),
]


def fill(path: Path, records: list[UsageRecord]) -> None:
    async def write() -> None:
        ledger = SQLiteLedger(path, batch_size=3)
        await ledger.open()
        for record in records:
            await ledger.save(record)
        await ledger.close()
        assert (ledger.written, ledger.failures) == (len(records), 0)

    anyio.run(write)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "usage.db"
    fill(path, RECORDS)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["usage", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_table_by_provider_over_all_time(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--db", str(db))
    assert (code, err) == (0, "")
    assert out == (
        "usage (all time), by provider\n"
        "provider  requests  errors  error %  prompt  completion  total                    cost  ttfb p50 ms  ttfb p95 ms\n"  # noqa: E501
        "--------  --------  ------  -------  ------  ----------  -----  ----------------------  -----------  -----------\n"  # noqa: E501
        "a                4       1    25.0%    1300         150   1450               1457 msat        200.0       1000.0\n"  # noqa: E501
        "b                2       0     0.0%      10           5     15             7 usd_micro         50.0         80.0\n"  # noqa: E501
        "-                1       1   100.0%       0           0      0                       -            -            -\n"  # noqa: E501
        "--------  --------  ------  -------  ------  ----------  -----  ----------------------  -----------  -----------\n"  # noqa: E501
        "TOTAL            7       2    28.6%    1310         155   1465  1457 msat, 7 usd_micro        100.0       1000.0\n"  # noqa: E501
    )


def test_since_a_span_leaves_older_records_out(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "--db", str(db), "--since", "1h")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("usage since 20")
    assert lines[0].endswith(", by provider")
    assert lines[3:] == [
        "a                3       1    33.3%     300          50    350               457 msat        200.0        300.0",  # noqa: E501
        "b                2       0     0.0%      10           5     15            7 usd_micro         50.0         80.0",  # noqa: E501
        "-                1       1   100.0%       0           0      0                      -            -            -",  # noqa: E501
        "--------  --------  ------  -------  ------  ----------  -----  ---------------------  -----------  -----------",  # noqa: E501
        "TOTAL            6       2    33.3%     310          55    365  457 msat, 7 usd_micro        100.0        300.0",  # noqa: E501
    ]


def test_json_by_provider_and_model_since_an_iso_time(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    since = datetime.fromtimestamp(NOW - 86400, UTC).isoformat()
    code, out, err = run(
        capsys, "--db", str(db), "--since", since, "--by", "provider,model", "--json"
    )
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["by"] == ["provider", "model"]
    assert data["since"] == pytest.approx(NOW - 86400, abs=1e-3)
    assert [(g["provider"], g["model"]) for g in data["groups"]] == [
        ("a", "fast"),
        ("b", "fast"),
        (None, "cheap"),
    ]
    assert data["groups"][0] == {
        "provider": "a",
        "model": "fast",
        "requests": 3,
        "errors": 1,
        "error_rate": 1 / 3,
        "pending": 0,
        "prompt_tokens": 300,
        "completion_tokens": 50,
        "total_tokens": 350,
        "cost": {"msat": 457},
        "reference_cost": {},
        "saved": {},
        "ttfb_ms_p50": 200.0,
        "ttfb_ms_p95": 300.0,
    }
    assert data["groups"][1]["pending"] == 1
    assert data["groups"][2]["cost"] == {}
    assert data["groups"][2]["ttfb_ms_p50"] is None
    assert data["total"] == {
        "requests": 6,
        "errors": 2,
        "error_rate": 1 / 3,
        "pending": 1,
        "prompt_tokens": 310,
        "completion_tokens": 55,
        "total_tokens": 365,
        "cost": {"msat": 457, "usd_micro": 7},
        "reference_cost": {},
        "saved": {},
        "ttfb_ms_p50": 100.0,
        "ttfb_ms_p95": 300.0,
    }


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        ("status", {"success": 4, "upstream_error": 1, "pending": 1, "exhausted": 1}),
        ("route", {CHAT: 6, "/v1/completions": 1}),
        ("upstream_model", {"m1": 3, "m2": 1, "m3": 2, None: 1}),
        ("model", {"fast": 6, "cheap": 1}),
    ],
)
def test_other_groupings(
    db: Path, capsys: pytest.CaptureFixture[str], by: str, expected: dict[str | None, int]
) -> None:
    code, out, _ = run(capsys, "--db", str(db), "--by", by, "--json")
    assert code == 0
    groups = json.loads(out)["groups"]
    assert {g[by]: g["requests"] for g in groups} == expected
    assert len(groups) == len(expected)


def test_percentiles_are_nearest_rank_and_exact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "usage.db"
    ttfbs = [
        float(v) for v in (17, 3, 9, 20, 1, 14, 6, 11, 19, 2, 8, 15, 4, 12, 18, 5, 10, 16, 7, 13)
    ]
    fill(path, [rec(f"r{i}", 10, "a", ttfb=v) for i, v in enumerate(ttfbs)])
    code, out, _ = run(capsys, "--db", str(path), "--json")
    assert code == 0
    total = json.loads(out)["total"]
    assert (total["ttfb_ms_p50"], total["ttfb_ms_p95"]) == (10.0, 19.0)


def test_an_empty_ledger_prints_zero_totals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "usage.db"
    fill(path, [])
    code, out, err = run(capsys, "--db", str(path), "--by", "provider,status")
    assert (code, err) == (0, "")
    assert out == (
        "usage (all time), by provider, status\n"
        "provider  status  requests  errors  error %  prompt  completion  total  cost  ttfb p50 ms  ttfb p95 ms\n"  # noqa: E501
        "--------  ------  --------  ------  -------  ------  ----------  -----  ----  -----------  -----------\n"  # noqa: E501
        "--------  ------  --------  ------  -------  ------  ----------  -----  ----  -----------  -----------\n"  # noqa: E501
        "TOTAL                    0       0     0.0%       0           0      0     -            -            -\n"  # noqa: E501
    )
    code, out, _ = run(capsys, "--db", str(path), "--json")
    assert json.loads(out)["total"]["requests"] == 0


def test_a_missing_database_is_reported_and_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(capsys) == (1, "", "waterfall-usage.db: no such ledger database\n")
    assert not (tmp_path / "waterfall-usage.db").exists()


def test_a_file_that_is_not_a_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all " * 64)
    code, out, err = run(capsys, "--db", str(junk))
    assert (code, out) == (1, "")
    assert err == f"{junk}: cannot read the ledger database: file is not a database\n"
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    code, out, err = run(capsys, "--db", str(other))
    assert (code, err) == (1, f"{other}: not a waterfall-asgi usage ledger (no usage table)\n")


def test_a_newer_ledger_is_refused(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 9")
    conn.close()
    code, _, err = run(capsys, "--db", str(db))
    assert code == 1
    assert "ledger schema version 9 is newer than this waterfall-asgi knows (4)" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--by", "colour"], "give one or more of provider, model, upstream_model, route, status"),
        (["--by", "provider,provider"], "give one or more of"),
        (["--since", "yesterday"], "'yesterday' is neither a span (30m, 1h, 2d) nor an ISO"),
    ],
)
def test_bad_arguments_exit_2(
    db: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["usage", "--db", str(db), *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_parse_since() -> None:
    assert parse_since("45s", now=1000.0) == 955.0
    assert parse_since("1.5h", now=10_000.0) == 4600.0
    assert parse_since("2d", now=200_000.0) == 200_000.0 - 172_800
    assert parse_since("1w", now=604_800.0) == 0.0
    assert parse_since("2024-01-01T01:00:00+01:00") == 1_704_067_200.0
    assert parse_since("2024-01-01") == datetime(2024, 1, 1).timestamp()


def test_reports_from_records_match_the_database(db: Path) -> None:
    from_db = read_usage(db, by=["provider", "status"], since=NOW - 3600)
    in_memory = UsageReport.from_records(RECORDS, by=["provider", "status"], since=NOW - 3600)
    assert from_db.to_dict() == in_memory.to_dict()
    assert from_db.table() == in_memory.table()
    with pytest.raises(ValueError, match="group by one or more distinct"):
        read_usage(db, by=["cost"])
    with pytest.raises(LedgerError, match="no such ledger database"):
        read_usage(db.with_name("nope.db"))


ROUTED = [
    # cost-routed: the cheapest served (saved 60), a fallback dearer than the reference (-20),
    # another unit (saved 5); a chain request has no reference; a request no one served
    rec("c1", 60, "a", tokens=(100, 10), cost=(40, "msat"), reference=100, ttfb=10.0),
    rec("c2", 50, "b", tokens=(100, 10), cost=(120, "msat"), reference=100, ttfb=20.0),
    rec("c3", 40, "a", tokens=(10, 5), cost=(3, "usd_micro"), reference=8, ttfb=30.0),
    rec("c4", 30, "a", tokens=(50, 5), cost=(25, "msat"), ttfb=40.0),
    rec("x1", 20, None, "exhausted"),
]


def test_the_reference_cost_and_the_saving_per_unit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "usage.db"
    fill(path, ROUTED)
    code, out, err = run(capsys, "--db", str(path))
    assert (code, err) == (0, "")
    assert out == (
        "usage (all time), by provider\n"
        "provider  requests  errors  error %  prompt  completion  total                   cost              reference                 saved  ttfb p50 ms  ttfb p95 ms\n"  # noqa: E501
        "--------  --------  ------  -------  ------  ----------  -----  ---------------------  ---------------------  --------------------  -----------  -----------\n"  # noqa: E501
        "a                3       0     0.0%     160          20    180   65 msat, 3 usd_micro  100 msat, 8 usd_micro  60 msat, 5 usd_micro         30.0         40.0\n"  # noqa: E501
        "b                1       0     0.0%     100          10    110               120 msat               100 msat              -20 msat         20.0         20.0\n"  # noqa: E501
        "-                1       1   100.0%       0           0      0                      -                      -                     -            -            -\n"  # noqa: E501
        "--------  --------  ------  -------  ------  ----------  -----  ---------------------  ---------------------  --------------------  -----------  -----------\n"  # noqa: E501
        "TOTAL            5       1    20.0%     260          30    290  185 msat, 3 usd_micro  200 msat, 8 usd_micro  40 msat, 5 usd_micro         20.0         40.0\n"  # noqa: E501
    )
    code, out, _ = run(capsys, "--db", str(path), "--json")
    data = json.loads(out)
    assert [(g["provider"], g["reference_cost"], g["saved"]) for g in data["groups"]] == [
        ("a", {"msat": 100, "usd_micro": 8}, {"msat": 60, "usd_micro": 5}),
        ("b", {"msat": 100}, {"msat": -20}),
        (None, {}, {}),
    ]
    total = data["total"]
    assert (total["cost"], total["reference_cost"], total["saved"]) == (
        {"msat": 185, "usd_micro": 3},
        {"msat": 200, "usd_micro": 8},
        {"msat": 40, "usd_micro": 5},
    )
    assert read_usage(path).to_dict() == UsageReport.from_records(ROUTED, by=["provider"]).to_dict()


def test_a_reference_cost_without_a_cost_is_summed_but_saves_nothing() -> None:
    report = UsageReport.from_records(
        [
            UsageRecord(
                "r1", 1.0, CHAT, status="upstream_error", cost_unit="msat", reference_cost=50
            ),
            UsageRecord("r2", 2.0, CHAT, cost=7, cost_unit="msat", reference_cost=10),
            UsageRecord("r3", 3.0, CHAT, reference_cost=4),  # no unit at all
        ],
        by=["status"],
    )
    total = report.total.to_dict()
    assert (total["cost"], total["reference_cost"], total["saved"]) == (
        {"msat": 7},
        {"msat": 60, "unknown": 4},
        {"msat": 3},
    )
    assert report.table().splitlines()[1].split()[8:11] == ["cost", "reference", "saved"]


def test_a_version_1_ledger_is_read_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "usage.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in SQLiteLedger.migrations[0]:  # the schema before reference_cost
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO usage (id, started_at, route, provider, status, cost, cost_unit) "
        "VALUES ('old', 1.5, '/v1/chat/completions', 'a', 'success', 12, 'msat')"
    )
    conn.close()
    code, out, err = run(capsys, "--db", str(path), "--json")
    assert (code, err) == (0, "")
    total = json.loads(out)["total"]
    assert (total["requests"], total["cost"], total["reference_cost"], total["saved"]) == (
        1,
        {"msat": 12},
        {},
        {},
    )
    code, out, _ = run(capsys, "--db", str(path))
    assert "reference" not in out
    assert raw_version(path) == 1  # the reader did not migrate it


def raw_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        return version
    finally:
        conn.close()


def test_the_ledger_a_config_names(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "router.toml"
    config.write_text(
        f'[providers.a]\nbase_url = "http://127.0.0.1:9/v1"\n\n[ledger]\npath = {str(db.name)!r}\n',
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)  # a relative path is where the router runs: here
    by_db = run(capsys, "--db", str(db))
    assert by_db[0] == 0
    assert run(capsys, "--config", str(config)) == by_db


def test_a_config_whose_ledger_is_in_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "router.toml"
    config.write_text(
        '[providers.a]\nbase_url = "http://127.0.0.1:9/v1"\n\n[ledger]\npath = ""\n',
        encoding="utf-8",
    )
    assert run(capsys, "--config", str(config)) == (
        1,
        "",
        f"{config}: the ledger is kept in memory (ledger.path is empty): there is no file to "
        "read\n",
    )
    bad = tmp_path / "bad.toml"
    bad.write_text('[providers.a]\nbase_url = "x"\n', encoding="utf-8")
    assert run(capsys, "--config", str(bad)) == (
        1,
        "",
        f"{bad}: invalid config\n  providers.a.base_url: must start with http:// or https://\n",
    )
    with pytest.raises(SystemExit) as info:
        main(["usage", "--config", str(config), "--db", "x.db"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
