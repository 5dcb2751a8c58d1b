"""One server per write-ahead log directory: a second ``metaas serve`` on the
same directory fails at once, naming it and the holder, and replays nothing
of the first one's log."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path

from metaas.client import Client, Series
from metaas.server.storage.codec import decode_distribution
from tests.support import METAAS, ServerProcess, free_port

MINUTE = 60_000


SERIES_BLOBS = "SELECT distribution FROM partials WHERE metric NOT LIKE '%#%'"


def _stored(database: Path) -> int:
    with sqlite3.connect(database) as db:
        # Series only: views (metrics with "#") hold the same samples again.
        blobs = [row[0] for row in db.execute(SERIES_BLOBS)]
    return sum(decode_distribution(blob).count for blob in blobs)


def test_a_second_server_on_the_same_wal_directory_fails_naming_the_holder(
    tmp_path: Path, figures: dict[str, object]
) -> None:
    first = ServerProcess(tmp_path / "first", flush_interval_s=3600).start()
    wal = tmp_path / "first" / "wal"
    try:
        assert first.process is not None
        now = time.time_ns() // 1_000_000
        with Client(first.target) as client:
            acked = client.write([Series("one", "m", [now - MINUTE] * 500, [1.0] * 500)])
        # Only in the first server's log: nothing is flushed before SIGTERM.
        (tmp_path / "second").mkdir()
        began = time.monotonic()
        second = subprocess.run(
            [
                METAAS,
                "serve",
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--storage",
                f"sqlite:///{tmp_path / 'second' / 'metaas.db'}",
                "--wal-dir",
                str(wal),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "OTEL_SDK_DISABLED": "true"},
        )
        refused_after_s = time.monotonic() - began
        output = second.stdout + second.stderr
        assert second.returncode == 2, output  # a setting to change: --wal-dir
        assert refused_after_s < 15
        assert str(wal) in output, output
        assert f"pid={first.process.pid}" in output, output

        with Client(first.target) as client:  # the first one goes on unharmed
            assert client.write([Series("one", "m", [now - MINUTE] * 7, [1.0] * 7)]) == 7
        assert first.terminate() == 0
    finally:
        first.stop()
    assert _stored(tmp_path / "first" / "metaas.db") == acked + 7
    second_db = tmp_path / "second" / "metaas.db"
    assert not second_db.exists() or _stored(second_db) == 0  # replayed nothing
    figures.update(
        {
            "second server refused after (s)": round(refused_after_s, 2),
            "exit status of the second server": second.returncode,
        }
    )
