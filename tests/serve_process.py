"""``waterfall-asgi serve`` as a child process for tests: started on a free port, its output
collected line by line, its resident memory read from ``/proc``, stopped by PID."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


def command() -> list[str]:
    script = Path(sys.executable).with_name("waterfall-asgi")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "waterfall_asgi.cli"]  # pragma: no cover - no console script


@dataclass
class Serving:
    """A running ``serve``: its port, process and output so far."""

    proc: subprocess.Popen[str]
    port: int = 0
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def rss_kib(self) -> int:
        """The process's resident set size now (``VmRSS``), in KiB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text(encoding="ascii")
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1])

    def peak_rss_kib(self) -> int:
        """The largest resident set size so far (``VmHWM``), in KiB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text(encoding="ascii")
        line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1])

    def terminate(self, timeout: float) -> int:
        """SIGTERM, then wait at most ``timeout`` seconds for the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def _pump(stream: IO[str], lines: list[str], seen: queue.Queue[str] | None) -> None:
    for line in stream:
        lines.append(line.rstrip("\n"))
        if seen is not None:
            seen.put(line)


@contextmanager
def serve(config: Path, *flags: str, env: dict[str, str] | None = None) -> Iterator[Serving]:
    """Run ``waterfall-asgi serve --config CONFIG --port 0 FLAGS...`` in ``config``'s folder
    until the block ends (then SIGTERM, and SIGKILL if it has not exited 15 s later)."""
    proc = subprocess.Popen(
        [*command(), "serve", "--config", str(config), "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=config.parent,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    serving = Serving(proc)
    urls: queue.Queue[str] = queue.Queue()
    readers = [
        threading.Thread(target=_pump, args=(proc.stdout, serving.stdout, urls), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, serving.stderr, None), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        for _ in range(150):  # each get waits at most 0.2 s: 30 s in all
            try:
                line = urls.get(timeout=0.2)
            except queue.Empty:
                if proc.poll() is not None:
                    break
                continue
            if line.startswith("http://127.0.0.1:"):
                serving.port = int(line.strip().rsplit(":", 1)[1].split("/", 1)[0])
                break
        assert serving.port, "\n".join(serving.stderr)
        yield serving
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:  # pragma: no cover - only when a test failed
                proc.kill()
                proc.wait(timeout=10)
        for reader in readers:
            reader.join(10)
        proc.stdout.close()
        proc.stderr.close()
