"""``metaas serve --storage dynamodb://...`` answers exactly as the embedded
default does for the same writes: two real servers, identical client writes
(including late samples that take the read-merge-write path), every query
compared."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from metaas.client import Client, QueryResult, Series
from tests.backends import dynamodb
from tests.support import ServerProcess, eventually

pytestmark = pytest.mark.e2e

MINUTE = 60_000
APP = "shop"
DYNOS = ("web.1", "web.2", "web.3", "web.4", "web.5")
STATUSES = ("2xx", "3xx", "4xx", "5xx")
STATS = ["count", "sum", "min", "max", "mean", "p50", "p90", "p99", "q0.25"]


def latencies(rng: np.random.Generator, n: int) -> list[float]:
    # Multiples of 1/16 ms: sums are exact in any order, so both servers
    # agree bit for bit however their flushes split the merges.
    return (np.round(rng.lognormal(3.5, 1.0, n) * 16) / 16).tolist()


def write_everywhere(clients: list[Client], series: list[Series]) -> None:
    for client in clients:
        assert client.write(series) == sum(len(s.values) for s in series)


def total_count(client: Client, start: int, end: int) -> float:
    result = client.query_range(
        APP, "router.latency_ms", start, end, step_ms=end - start, stats=["count"]
    )  # one bucket
    return sum(sum(s.stats["count"]) for s in result.series)


def comparable(result: QueryResult) -> object:
    return [(dict(s.labels), s.times_ms, dict(s.stats)) for s in result.series]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    # Eventually consistent queries here; the other DynamoDB tests use the default.
    url = asyncio.run(dynamodb.new_table("e2e", consistent_queries="false"))
    embedded = ServerProcess(tmp_path / "sqlite")
    remote = ServerProcess(tmp_path / "dynamodb", storage=url, env=dynamodb.CREDENTIALS)
    try:
        embedded.start()
        remote.start()
        yield embedded, remote
    finally:
        embedded.stop()
        remote.stop()


def test_dynamodb_server_answers_like_the_embedded_one(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    rng = np.random.default_rng(11)
    now = time.time_ns() // 1_000_000
    start = now - now % MINUTE - 10 * MINUTE
    end = start + 12 * MINUTE
    with Client(servers[0].target) as embedded, Client(servers[1].target) as remote:
        clients = [embedded, remote]
        written = 0
        for dyno in DYNOS:
            for status in STATUSES:
                times = rng.integers(start, now, 600)
                values = latencies(rng, 600)
                labels = {"dyno": dyno, "status": status}
                for part in np.array_split(np.arange(600), 3):
                    write_everywhere(
                        clients,
                        [
                            Series(
                                APP,
                                "router.latency_ms",
                                times[part].tolist(),
                                [values[i] for i in part],
                                labels,
                            )
                        ],
                    )
                written += 600
            memory_times = list(range(start, now, 15_000))
            write_everywhere(
                clients,
                [
                    Series(
                        APP,
                        "dyno.memory_mb",
                        memory_times,
                        [float(rng.integers(200, 512)) for _ in memory_times],
                        {"dyno": dyno},
                    )
                ],
            )

        def visible() -> None:
            for client in clients:
                assert total_count(client, start, end) == written

        eventually(visible)

        # Late samples for minutes that have left memory: each server reads
        # its stored partial, merges and rewrites it.
        late = [
            Series(
                APP,
                "router.latency_ms",
                [start + i * 7_000 for i in range(40)],
                latencies(rng, 40),
                {"dyno": dyno, "status": "5xx"},
            )
            for dyno in (*DYNOS, "web.6")
        ]
        write_everywhere(clients, late)
        written += 40 * len(late)
        eventually(visible)

        for step in (MINUTE, 5 * MINUTE):
            for group_by in ((), ("dyno",), ("status",), ("dyno", "status")):
                for matchers in (None, {"status": "5xx"}):
                    results = [
                        c.query_range(
                            APP,
                            "router.latency_ms",
                            start,
                            end,
                            step_ms=step,
                            stats=STATS,
                            group_by=group_by,
                            matchers=matchers,
                        )
                        for c in clients
                    ]
                    assert results[0].series, (step, group_by, matchers)
                    assert comparable(results[0]) == comparable(results[1]), (
                        step,
                        group_by,
                        matchers,
                    )
                    assert [r.served_by for r in results] == ["sqlite", "dynamodb"]
        memory = [
            c.query_range(APP, "dyno.memory_mb", start, end, step_ms=2 * MINUTE, group_by=["dyno"])
            for c in clients
        ]
        assert comparable(memory[0]) == comparable(memory[1])

        for metric in (None, "dyno.memory_mb"):
            listed = [c.list_series(APP, start, end, metric=metric) for c in clients]
            assert listed[0] == listed[1]
        assert len(listed[0].series) == len(DYNOS)
        everything = embedded.list_series(APP, start, end)
        assert len(everything.series) == len(DYNOS) * len(STATUSES) + 1 + len(DYNOS)
        assert remote.list_series(APP, start, end) == everything
