"""Several worker processes, one scrape: with ``PROMETHEUS_MULTIPROC_DIR`` set, uvicorn's two
workers each count what they serve, and a scrape of ``/metrics`` (answered by either) adds them
up."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from waterfall_fakes import FakeProvider, FakeServer

APP = """\
from waterfall_asgi import create_app

app = create_app("router.toml")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _requests_in(files: list[Path], scratch: Path) -> float:
    """The ``waterfall_requests_total`` these per-process files hold, summed."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir()
    for f in files:
        shutil.copy(f, scratch / f.name)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(scratch))
    return sum(
        s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == "waterfall_requests_total"
    )


@pytest.mark.loopback
def test_two_workers_one_scrape_counts_add_up(tmp_path: Path) -> None:
    prom = tmp_path / "prom"
    prom.mkdir()
    upstream = FakeProvider(name="up")
    with FakeServer(upstream) as fake:
        (tmp_path / "router.toml").write_text(
            f'[providers.up]\nbase_url = "{fake.url}"\n\n[chains]\nfast = ["up/fake-small"]\n\n'
            '[ledger]\npath = ""\n\n[metrics]\nenabled = true\npath = "/metrics"\n',
            encoding="utf-8",
        )
        (tmp_path / "router_app.py").write_text(APP, encoding="utf-8")
        port = _free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "router_app:app",
                "--workers",
                "2",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=tmp_path,
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        errors: list[str] = []
        reader = threading.Thread(target=lambda: errors.extend(proc.stderr or []), daemon=True)
        reader.start()
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(300):  # until both workers answer /health (bounded)
                try:
                    httpx.get(f"{base}/health", timeout=1)
                except httpx.TransportError:
                    if proc.poll() is not None:
                        break
                    threading.Event().wait(0.1)
                    continue
                break
            body = {"model": "fast", "messages": [{"role": "user", "content": "Hi"}]}
            sent = 0
            per_worker: dict[str, float] = {}
            for _ in range(200):  # a new connection each: the kernel spreads them (bounded)
                answer = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=10)
                assert answer.status_code == 200, answer.text
                sent += 1
                if sent % 10 == 0:
                    per_worker = {
                        f.name: _requests_in([f], tmp_path / "one")
                        for f in prom.glob("counter_*.db")
                    }
                    if sent >= 20 and sum(v > 0 for v in per_worker.values()) >= 2:
                        break
            assert sum(v > 0 for v in per_worker.values()) == 2, per_worker  # both served
            scrape = httpx.get(f"{base}/metrics", timeout=10)
            assert scrape.status_code == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:  # pragma: no cover - only when a test failed
                proc.kill()
                proc.wait(timeout=10)
            reader.join(10)
            proc.stderr.close()
    total = {
        (s.name, s.labels.get("status")): s.value
        for family in text_string_to_metric_families(scrape.text)
        for s in family.samples
        if s.name == "waterfall_requests_total"
    }
    assert total == {("waterfall_requests_total", "success"): sent}, (total, errors)
    assert sum(per_worker.values()) == sent
