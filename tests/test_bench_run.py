"""benchmarks/run.py's arithmetic: the CPU clock it reads and the round-by-round ratios."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # (dataclasses look their module up)
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["bench_run"]
    return module


@pytest.mark.skipif(sys.platform != "linux", reason="the process CPU clock is Linux's")
def test_the_cpu_clock_of_a_process_is_read_to_the_nanosecond(run: ModuleType) -> None:
    assert run.PRECISE_CPU
    before, mine_before = run.cpu_seconds(os.getpid()), time.process_time()
    while time.process_time() - mine_before < 0.02:  # burn a little CPU
        pass
    after, mine_after = run.cpu_seconds(os.getpid()), time.process_time()
    # the same clock as the process's own, read from outside: no 10 ms ticks
    assert after - before == pytest.approx(mine_after - mine_before, abs=0.002)


def cell(run: ModuleType, rounds: list[tuple[int, float, float]]) -> object:
    c = run.Cell()
    for requests, seconds, cpu in rounds:
        c.requests += requests
        c.seconds += seconds
        c.cpu += cpu
        c.rounds.append((requests, seconds, cpu))
    return c


def test_round_ratios_pair_each_round_with_the_passthroughs(run: ModuleType) -> None:
    cells = {
        # the passthrough: 0.1 s of CPU per 100 requests, then a round the machine slowed
        ("aiohttp", "stream", 32): cell(run, [(100, 1.0, 0.1), (100, 1.0, 0.1), (100, 2.0, 0.4)]),
        # the router: twice the passthrough's CPU in every round, half its rate
        ("router", "stream", 32): cell(run, [(100, 2.0, 0.2), (100, 2.0, 0.2), (100, 4.0, 0.8)]),
        ("serve", "stream", 32): cell(run, [(100, 1.0, 0.1), (100, 1.0, 0.3), (100, 1.0, 0.2)]),
    }
    text = run.round_ratios(cells)
    cpu_part, rate_part = text.split("req/s ×")
    lines = {line.split("|")[1].strip(): line for line in cpu_part.splitlines() if "|" in line}
    assert "2.00 (2.00-2.00)" in lines["router"]
    assert "1.00 (0.50-3.00)" in lines["serve"]  # ratios 1, 3, 0.5: the median is the middle
    assert lines["router"].count(" - ") == 3  # no rounds of the other workloads: no ratio
    rates = {line.split("|")[1].strip(): line for line in rate_part.splitlines() if "|" in line}
    assert "0.50 (0.50-0.50)" in rates["router"]
    assert "1.00 (1.00-2.00)" in rates["serve"]


def test_the_shared_store_rows_are_also_given_against_the_sqlite_router(run: ModuleType) -> None:
    cells = {
        ("router+sqlite", "json", 32): cell(
            run, [(100, 1.0, 0.2), (100, 1.0, 0.2), (100, 1.0, 0.4)]
        ),
        # the PostgreSQL ledger: 10 % more CPU a request in two rounds, less in a third
        ("router+pg", "json", 32): cell(run, [(100, 1.0, 0.22), (200, 1.0, 0.44), (100, 1.0, 0.2)]),
    }
    text = run.ratios_to_sqlite(cells)
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if "|" in line}
    assert "1.10 (0.50-1.10)" in lines["router+pg"]
    assert "router+redis+pg" not in lines  # not measured: no row
    assert run.ratios_to_sqlite({}) == ""


def test_the_redis_row_is_a_shared_store_row(run: ModuleType) -> None:
    assert "router+redis" in run.PROXIES
    cells = {
        ("router+sqlite", "stream", 1): cell(run, [(100, 1.0, 0.2), (100, 1.0, 0.2)]),
        ("router+redis", "stream", 1): cell(run, [(100, 1.0, 0.21), (100, 1.0, 0.23)]),
    }
    lines = {
        line.split("|")[1].strip(): line
        for line in run.ratios_to_sqlite(cells).splitlines()
        if "|" in line
    }
    assert "1.10 (1.05-1.15)" in lines["router+redis"]


def test_the_observability_rows_are_given_against_the_router(run: ModuleType) -> None:
    assert {"router+metrics", "router+otel"} <= set(run.PROXIES)
    cells = {
        ("router", "json", 32): cell(run, [(100, 1.0, 0.2), (100, 1.0, 0.2)]),
        # metrics on: 2 % and 4 % more CPU a request; OpenTelemetry: 10 % in both rounds
        ("router+metrics", "json", 32): cell(run, [(100, 1.0, 0.204), (100, 1.0, 0.208)]),
        ("router+otel", "json", 32): cell(run, [(100, 1.0, 0.22), (200, 1.0, 0.44)]),
        ("router+sqlite", "json", 32): cell(run, [(100, 1.0, 0.4), (100, 1.0, 0.4)]),
    }
    text = run.ratios_to_router(cells)
    assert text.startswith("CPU/req ÷ router,")
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if "|" in line}
    assert "1.03 (1.02-1.04)" in lines["router+metrics"]
    assert "1.10 (1.10-1.10)" in lines["router+otel"]
    assert "router+sqlite" not in lines  # not an observability row
    assert run.ratios_to_router({}) == ""


def test_the_observability_rows_turn_their_part_on(run: ModuleType) -> None:
    app = run.router_app("http://127.0.0.1:9", None, observed={"tracing": {"enabled": True}})
    assert app.tracing is not None
    metrics = run.router_app("http://127.0.0.1:9", None, observed={"metrics": {"enabled": True}})
    assert metrics.metrics is not None
