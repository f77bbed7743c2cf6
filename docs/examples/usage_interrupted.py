"""SQLiteLedger on its own: WAL mode, its schema version, and rows a dead process left pending."""

import asyncio
import contextlib
import sqlite3
import tempfile
import time
from pathlib import Path

from waterfall_asgi import SQLiteLedger, UsageRecord, read_records


async def main(path: Path) -> None:
    # A process accepts a request: its record is saved, pending...
    first = SQLiteLedger(path)
    await first.open()
    await first.save(UsageRecord(id="r1", started_at=time.time(), route="/v1/chat/completions"))
    await first.close()  # ...and the process stops before the request finishes.
    assert [r.status for r in read_records(path)] == ["pending"]

    # The next start marks it interrupted, so no record stays pending forever.
    second = SQLiteLedger(path)
    await second.open()
    assert second.interrupted == 1
    await second.close()


with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "waterfall-usage.db"
    asyncio.run(main(path))
    (record,) = read_records(path)
    assert (record.status, record.error) == (
        "interrupted",
        "the process ended before the request finished",
    )
    # a plain SQLite file, readable by any SQLite tool
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (len(SQLiteLedger.migrations),)
        assert db.execute("SELECT id, status FROM usage").fetchall() == [("r1", "interrupted")]
