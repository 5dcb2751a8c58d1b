"""The write-ahead log's directory turns append-only (``chattr +a``) under
sustained ingest: stored segments cannot be deleted, yet every acknowledged
sample becomes queryable, the segments are deleted once the attribute is
gone, and SIGTERM still exits 0 within the grace period."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from metaas.client import Client, Series
from tests.support import ServerProcess, eventually

MINUTE = 60_000
PER_REQUEST = 1_000
WRITE_FOR_S = 4.0
GRACE_S = 10.0
# A read-only bind mount is no substitute: remounting read-only fails (EBUSY)
# while the server holds its open segment for writing, and a read-only
# directory would also refuse new segments, which is another fault.
_CANDIDATE_ROOTS = (Path("/var/tmp"), Path("/dev/shm"))


def _supports_append_only(directory: Path) -> bool:
    """Whether ``chattr +a`` works on ``directory``'s filesystem."""
    if shutil.which("chattr") is None or shutil.which("lsattr") is None:
        return False
    directory.mkdir(parents=True, exist_ok=True)
    probe = Path(tempfile.mkdtemp(prefix=".append-only-probe-", dir=directory))
    try:
        listed = subprocess.run(["lsattr", "-d", str(probe)], capture_output=True, check=False)
        if listed.returncode != 0:
            return False
        set_ = subprocess.run(["chattr", "+a", str(probe)], capture_output=True, check=False)
        return set_.returncode == 0
    finally:
        subprocess.run(["chattr", "-a", str(probe)], capture_output=True, check=False)
        probe.rmdir()


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """The server's data directory, on a filesystem where ``chattr +a`` works:
    tmp_path's if it supports it, else a local one that does."""
    if _supports_append_only(tmp_path):
        yield tmp_path / "server"
        return
    for root in _CANDIDATE_ROOTS:
        if root.is_dir() and _supports_append_only(root):
            made = Path(tempfile.mkdtemp(prefix="metaas-append-only-", dir=root))
            try:
                yield made / "server"
            finally:
                shutil.rmtree(made, ignore_errors=True)
            return
    checked = ", ".join(str(p) for p in (tmp_path, *_CANDIDATE_ROOTS))
    pytest.fail(
        f"chattr +a is unavailable or unsupported on every candidate filesystem ({checked}); "
        "this test needs root and a filesystem with the append-only attribute (ext4, xfs, btrfs)"
    )


@contextlib.contextmanager
def _append_only(directory: Path) -> Iterator[None]:
    subprocess.run(["chattr", "+a", str(directory)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-a", str(directory)], check=True)


def _segments(wal: Path) -> int:
    return len(list(wal.glob("*.wal")))


def _count(client: Client, start_ms: int) -> int:
    result = client.query_range(
        "chaos", "m", start_ms, start_ms + 6 * MINUTE, step_ms=6 * MINUTE, stats=["count"]
    )
    return int(sum(sum(series.stats["count"]) for series in result.series))


def _write_for(client: Client, seconds: float, start_ms: int, prefix: str) -> int:
    """Write requests of PER_REQUEST samples for ``seconds``; return the
    number of samples acknowledged."""
    acked = request = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        times = [start_ms + (request * 13 + i) % (4 * MINUTE) for i in range(PER_REQUEST)]
        acked += client.write(
            [Series("chaos", "m", times, [1.0] * PER_REQUEST)],
            idempotency_key=f"{prefix}-{request}",
        )
        request += 1
    return acked


def _minute_ago() -> int:
    return time.time_ns() // 1_000_000 // MINUTE * MINUTE - 3 * MINUTE


def test_append_only_wal_directory_does_not_stop_delivery(
    data_dir: Path, figures: dict[str, object]
) -> None:
    server = ServerProcess(data_dir, flush_interval_s=0.2).start()
    wal = data_dir / "wal"
    start_ms = _minute_ago()
    acked = visible = held = 0
    exit_s: float | None = None
    try:
        with Client(server.target) as client:
            with _append_only(wal):
                acked = _write_for(client, WRITE_FOR_S, start_ms, "append-only")

                def all_visible() -> None:
                    nonlocal visible
                    visible = _count(client, start_ms)
                    assert visible == acked, f"{visible} of {acked} acknowledged samples visible"

                eventually(all_visible, timeout=15)
                held = _segments(wal) - 1  # the open one is not stored yet
                assert held > 1, "stored segments were deleted from an append-only directory"

            def cleaned_up() -> None:
                assert _segments(wal) <= 2, f"{_segments(wal)} segments left"

            eventually(cleaned_up, timeout=30)
            assert _count(client, start_ms) == acked
        began = time.monotonic()
        code = server.terminate(timeout=60)
        exit_s = time.monotonic() - began
        assert code == 0, server.log()[-3000:]
        assert exit_s < GRACE_S
    finally:
        server.stop()
        figures.update(
            {
                "faults injected": f"WAL directory append-only for {WRITE_FOR_S:.0f} s of writes",
                "samples acknowledged": acked,
                "samples visible while append-only": visible,
                "stored segments left undeletable": held,
                "seconds to exit on SIGTERM": None if exit_s is None else round(exit_s, 2),
            }
        )
    assert "final flush failed" not in server.log()


def test_sigterm_while_append_only_exits_0_and_the_next_start_counts_once(
    data_dir: Path, figures: dict[str, object]
) -> None:
    wal = data_dir / "wal"
    start_ms = _minute_ago()
    acked = 0
    exit_s: float | None = None
    server = ServerProcess(data_dir, flush_interval_s=0.2).start()
    try:
        with _append_only(wal):
            with Client(server.target) as client:
                # The last requests are answered right before SIGTERM, so the
                # final flush has work to store and a segment to delete.
                acked = _write_for(client, 2.0, start_ms, "sigterm")
            began = time.monotonic()
            code = server.terminate(timeout=60)
            exit_s = time.monotonic() - began
            left = _segments(wal)
        assert code == 0, server.log()[-3000:]
        assert exit_s < GRACE_S
        assert left > 2  # stored, not deleted: replayed by the next start
    finally:
        server.stop()
    assert "final flush failed" not in server.log()
    assert "could not be deleted" in server.log()

    restarted = ServerProcess(data_dir, flush_interval_s=0.2).start()
    try:
        with Client(restarted.target) as client:

            def replayed_once() -> None:
                assert _segments(wal) <= 2, f"{_segments(wal)} segments left"
                assert _count(client, start_ms) == acked

            eventually(replayed_once, timeout=30)
            time.sleep(1.0)  # several flush intervals: nothing is added later
            assert _count(client, start_ms) == acked
        assert restarted.terminate() == 0
    finally:
        restarted.stop()
    figures.update(
        {
            "faults injected": "SIGTERM while the WAL directory is append-only",
            "samples acknowledged": acked,
            "seconds to exit on SIGTERM": round(exit_s, 2),
            "stored segments left for the next start": left,
        }
    )
