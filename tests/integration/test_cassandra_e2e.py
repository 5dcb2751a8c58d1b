"""``metaas serve`` on Cassandra, end to end: the same answers as the embedded
store, replicas that scale out, and restarts that lose nothing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from metaas.client import Client, QueryResult, Series
from tests.backends.cassandra import drop_keyspace, url
from tests.support import ServerProcess, eventually

pytestmark = pytest.mark.e2e

MINUTE = 60_000
APP = "shop"
LATENCY = "router.latency_ms"
LOAD = "dyno.load_avg"
DYNOS = ("web.1", "web.2", "web.3")
STATUSES = ("2xx", "4xx", "5xx")
STATS = ["count", "sum", "min", "max", "mean", "p50", "p90", "p99", "q0.999"]
EXACT = ("count", "min", "max")


def _fresh(keyspace: str) -> str:
    asyncio.run(drop_keyspace(keyspace))
    return url(keyspace)


@contextlib.contextmanager
def _running(*servers: ServerProcess) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    try:
        for server in servers:
            started.append(server.start())
        yield started
    finally:
        for server in started:
            server.stop()


def _traffic(seed: int, start: int, n: int) -> list[list[Series]]:
    """Write requests: lognormal latencies by dyno and status, load by dyno."""
    rng = np.random.default_rng(seed)
    requests = []
    for _ in range(4):
        batch = []
        for dyno, status in itertools.product(DYNOS, STATUSES):
            times = rng.integers(start, start + 10 * MINUTE, n // 36)
            values = rng.lognormal(3.0 + STATUSES.index(status), 0.8, times.size)
            batch.append(
                Series(
                    APP, LATENCY, times.tolist(), values.tolist(), {"dyno": dyno, "status": status}
                )
            )
        for dyno in DYNOS:
            times = rng.integers(start, start + 10 * MINUTE, 30)
            batch.append(
                Series(APP, LOAD, times.tolist(), rng.uniform(0, 4, 30).tolist(), {"dyno": dyno})
            )
        requests.append(batch)
    return requests


def _count(client: Client, metric: str, start: int, end: int) -> float:
    result = client.query_range(APP, metric, start, end, step_ms=end - start, stats=["count"])
    return sum(sum(s.stats["count"]) for s in result.series)


def _table(result: QueryResult) -> dict[tuple[tuple[str, str], ...], dict[int, dict[str, float]]]:
    return {tuple(sorted(series.labels.items())): dict(series.rows()) for series in result.series}


def _assert_same(ours: QueryResult, reference: QueryResult) -> None:
    got, want = _table(ours), _table(reference)
    assert got.keys() == want.keys()
    for labels, rows in want.items():
        assert got[labels].keys() == rows.keys(), labels
        for time_ms, stats in rows.items():
            for stat, value in stats.items():
                if stat in EXACT:
                    assert got[labels][time_ms][stat] == value, (labels, time_ms, stat)
                else:
                    assert got[labels][time_ms][stat] == pytest.approx(value, rel=1e-12)


def test_serves_the_same_answers_as_the_embedded_store(tmp_path: Path) -> None:
    now = time.time_ns() // 1_000_000
    start = now - now % MINUTE - 11 * MINUTE
    end = start + 10 * MINUTE
    requests = _traffic(7, start, 20_000)
    expected_latency = sum(
        len(s.values) for batch in requests for s in batch if s.metric == LATENCY
    )
    with _running(
        ServerProcess(tmp_path / "sqlite"),
        ServerProcess(tmp_path / "cassandra", storage=_fresh("metaas_it_e2e")),
    ) as servers:
        clients = [Client(server.target) for server in servers]
        try:
            for client in clients:
                for batch in requests:
                    client.write(batch)
            for client in clients:
                eventually(lambda c=client: _assert_count(c, LATENCY, start, end, expected_latency))
                eventually(lambda c=client: _assert_count(c, LOAD, start, end, 4 * 3 * 30))
            reference, ours = clients
            for step, group_by in itertools.product(
                (MINUTE, 5 * MINUTE, 7 * MINUTE), ((), ("dyno",), ("dyno", "status"))
            ):
                want = reference.query_range(
                    APP, LATENCY, start, end, step_ms=step, stats=STATS, group_by=group_by
                )
                got = ours.query_range(
                    APP, LATENCY, start, end, step_ms=step, stats=STATS, group_by=group_by
                )
                assert (want.served_by, got.served_by) == ("sqlite", "cassandra")
                _assert_same(got, want)
            for matchers in ({"dyno": "web.2"}, {"status": "5xx", "dyno": "web.1"}):
                _assert_same(
                    ours.query_range(APP, LATENCY, start, end, stats=STATS, matchers=matchers),
                    reference.query_range(APP, LATENCY, start, end, stats=STATS, matchers=matchers),
                )
            _assert_same(
                ours.query_range(APP, LOAD, start, end, step_ms=2 * MINUTE, group_by=["dyno"]),
                reference.query_range(APP, LOAD, start, end, step_ms=2 * MINUTE, group_by=["dyno"]),
            )
            # Whole range, a range cutting minutes off both ends, one metric.
            for window, metric in (
                ((start - 60 * MINUTE, end + MINUTE), None),
                ((start + 3 * MINUTE + 1, start + 4 * MINUTE), None),
                ((start, end), LOAD),
            ):
                want_list = reference.list_series(APP, *window, metric=metric)
                got_list = ours.list_series(APP, *window, metric=metric)
                assert got_list.metrics == want_list.metrics
                assert _series_set(got_list) == _series_set(want_list)
            assert len(_series_set(ours.list_series(APP, start, end))) == 9 + 3
            assert ours.list_series("nobody", start, end).series == ()
        finally:
            for client in clients:
                client.close()


def _series_set(listed: object) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (s.metric, tuple(sorted(s.labels.items())))
        for s in listed.series  # type: ignore[attr-defined]
    }


def _assert_count(client: Client, metric: str, start: int, end: int, expected: int) -> None:
    assert _count(client, metric, start, end) == expected


def test_two_replicas_answer_the_merged_exact_result(tmp_path: Path) -> None:
    storage = _fresh("metaas_it_scale")
    rng = np.random.default_rng(11)
    now = time.time_ns() // 1_000_000
    start = now - now % MINUTE - 6 * MINUTE
    n = 30_000
    times = rng.integers(start, start + 5 * MINUTE, n)
    values = rng.lognormal(2.5, 1.0, n)
    labels = {"dyno": "web.1", "status": "2xx"}
    with _running(
        ServerProcess(tmp_path / "a", storage=storage),
        ServerProcess(tmp_path / "b", storage=storage),
    ) as servers:
        clients = [Client(server.target) for server in servers]
        try:
            # Both replicas ingest the same app and series, interleaved.
            for i, part in enumerate(np.array_split(np.arange(n), 10)):
                clients[i % 2].write(
                    [Series(APP, LATENCY, times[part].tolist(), values[part].tolist(), labels)]
                )
            for client in clients:
                eventually(lambda c=client: _assert_count(c, LATENCY, start, start + 5 * MINUTE, n))
            answers = [
                client.query_range(
                    APP, LATENCY, start, start + 5 * MINUTE, step_ms=MINUTE, stats=STATS
                )
                for client in clients
            ]
        finally:
            for client in clients:
                client.close()
    assert _table(answers[0]) == _table(answers[1])
    (series,) = answers[0].series
    minutes = times - times % MINUTE
    for time_ms, row in series.rows():
        sample = values[minutes == time_ms]
        assert row["count"] == sample.size
        assert row["min"] == sample.min()
        assert row["max"] == sample.max()
        assert row["sum"] == pytest.approx(sample.sum(), rel=1e-12)
        for stat, q in (("p50", 50), ("p99", 99)):
            exact = np.percentile(sample, q)
            assert abs(row[stat] - exact) / exact <= 0.0054 * 2
    assert sum(series.stats["count"]) == n


def test_late_samples_after_a_restart_lose_none_of_the_earlier_ones(tmp_path: Path) -> None:
    storage = _fresh("metaas_it_restart")
    now = time.time_ns() // 1_000_000
    minute = now - now % MINUTE - 10 * MINUTE  # long out of the hot window
    rng = np.random.default_rng(3)
    batches = [rng.lognormal(1.0, 0.7, size) for size in (5_000, 3_000, 2_000)]
    labels = {"dyno": "web.1"}

    def send(client: Client, values: np.ndarray) -> None:
        times = rng.integers(minute, minute + MINUTE, values.size)
        client.write([Series(APP, LATENCY, times.tolist(), values.tolist(), labels)])

    def exact(client: Client, sent: list[np.ndarray]) -> None:
        everything = np.concatenate(sent)
        result = client.query_range(
            APP, LATENCY, minute, minute + MINUTE, stats=["count", "sum", "min", "max"]
        )
        assert result.series, "nothing yet"
        (row,) = [stats for _, stats in result.series[0].rows()]
        assert row["count"] == everything.size
        assert row["min"] == everything.min()
        assert row["max"] == everything.max()
        assert row["sum"] == pytest.approx(everything.sum(), rel=1e-12)

    data = tmp_path / "server"
    first = ServerProcess(data, storage=storage).start()
    try:
        with Client(first.target) as client:
            send(client, batches[0])
            eventually(lambda: exact(client, batches[:1]))
            # Late: the minute was flushed and left memory, so this delta is
            # merged with the stored row (or replayed from the log at restart).
            send(client, batches[1])
        first.kill()
    finally:
        first.stop()
    second = ServerProcess(data, storage=storage).start()
    try:
        with Client(second.target) as client:
            send(client, batches[2])
            eventually(lambda: exact(client, batches), timeout=30)
    finally:
        second.stop()
