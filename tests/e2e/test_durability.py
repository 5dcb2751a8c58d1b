"""Acknowledged samples survive SIGKILL; SIGTERM drains and flushes."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from metaas.client import Client, Series
from metaas.server.storage.codec import decode_distribution
from tests.support import ServerProcess, eventually

MINUTE = 60_000


SERIES_BLOBS = "SELECT distribution FROM partials WHERE metric NOT LIKE '%#%'"


def _requests(count: int, seed: int) -> list[tuple[str, list[Series]]]:
    """Requests of 1,000 samples over the last 5 minutes on 3 series."""
    rng = np.random.default_rng(seed)
    now = time.time_ns() // 1_000_000
    made = []
    for i in range(count):
        times = rng.integers(now - 5 * MINUTE, now, 1000)
        values = rng.lognormal(2.0, 0.5, 1000)
        dyno = f"web.{i % 3 + 1}"
        made.append(
            (
                f"req-{seed}-{i}",
                [Series("acme", "latency", times.tolist(), values.tolist(), {"dyno": dyno})],
            )
        )
    return made


def _totals(client: Client) -> tuple[float, float]:
    now = time.time_ns() // 1_000_000
    result = client.query_range(
        "acme",
        "latency",
        now - 10 * MINUTE,
        now + MINUTE,
        step_ms=11 * MINUTE,
        stats=["count", "sum"],
    )
    if not result.series:
        return 0.0, 0.0
    row = result.series[0].rows()
    return sum(r["count"] for _, r in row), sum(r["sum"] for _, r in row)


@pytest.mark.parametrize(
    "flush_interval_s",
    [
        3600,  # nothing flushed: every acknowledged sample is only in the log
        0.05,  # flushes race the writes: some minutes stored, some only logged
    ],
)
def test_sigkill_after_acks_loses_nothing_and_retries_count_once(
    tmp_path: Path, flush_interval_s: float
) -> None:
    data = tmp_path / "server"
    first = ServerProcess(data, flush_interval_s=flush_interval_s).start()
    requests = _requests(60, seed=1)
    acked_count, acked_sum = 0, 0.0
    try:
        with Client(first.target) as client:
            for key, series in requests:
                acked_count += client.write(series, idempotency_key=key)
                acked_sum += sum(sum(s.values) for s in series)
        first.kill()  # right after the last ack
    finally:
        first.stop()
    assert acked_count == 60_000

    second = ServerProcess(data, flush_interval_s=0.2).start()
    try:
        with Client(second.target) as client:

            def recovered() -> None:
                count, total = _totals(client)
                assert count == acked_count
                assert abs(total - acked_sum) <= 1e-9 * acked_sum

            eventually(recovered)
            # Retries of acknowledged requests, after the restart: answered
            # with the first answer and not applied again.
            for key, series in requests[-5:] + requests[:5]:
                assert client.write(series, idempotency_key=key) == 1000
            time.sleep(1.0)  # several flush intervals
            assert _totals(client)[0] == acked_count
    finally:
        second.stop()


def test_sigterm_drains_and_flushes_before_exit(tmp_path: Path) -> None:
    data = tmp_path / "server"
    # Flushes never happen on their own during the test: only SIGTERM flushes.
    server = ServerProcess(data, flush_interval_s=3600).start()
    requests = _requests(10, seed=2)
    try:
        with Client(server.target) as client:
            acked = sum(client.write(series, idempotency_key=key) for key, series in requests)
        assert server.terminate() == 0
    finally:
        server.stop()
    assert acked == 10_000
    with sqlite3.connect(data / "metaas.db") as db:
        # Series only: views (metrics with "#") hold the same samples again.
        blobs = [row[0] for row in db.execute(SERIES_BLOBS)]
    assert sum(decode_distribution(b).count for b in blobs) == acked
    assert "final flush failed" not in server.log()
    # The log keeps one segment: the idempotency keys for the next run.
    assert len(list((data / "wal").glob("*.wal"))) == 1
