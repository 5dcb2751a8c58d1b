"""100,000 lognormal samples through the real server, checked against numpy."""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import pytest

from metaas.client import Client, Series
from tests.support import ServerProcess, eventually

MINUTE = 60_000
DYNOS = ("web.1", "web.2", "web.3", "web.4")
STATUSES = ("2xx", "5xx")
STATS = ["count", "sum", "min", "max", "mean", "p50", "p90", "p99"]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The server with 100,000 samples over 10 minutes and 8 label sets."""
    server = ServerProcess(tmp_path_factory.mktemp("accuracy")).start()
    rng = np.random.default_rng(2024)
    now = time.time_ns() // 1_000_000
    start = now - now % MINUTE - 10 * MINUTE
    n = 100_000
    times = rng.integers(start, start + 10 * MINUTE, n)
    values = rng.lognormal(mean=3.5, sigma=1.1, size=n)
    dyno = rng.integers(0, len(DYNOS), n)
    status = rng.integers(0, len(STATUSES), n)
    try:
        with Client(server.target) as client:
            for d in range(len(DYNOS)):
                for s in range(len(STATUSES)):
                    mask = (dyno == d) & (status == s)
                    # Several requests per series, so partials merge across writes.
                    for chunk in np.array_split(np.flatnonzero(mask), 3):
                        client.write(
                            [
                                Series(
                                    "shop",
                                    "router.latency_ms",
                                    times[chunk].tolist(),
                                    values[chunk].tolist(),
                                    {"dyno": DYNOS[d], "status": STATUSES[s]},
                                )
                            ]
                        )

            def all_visible() -> None:
                result = client.query_range(
                    "shop",
                    "router.latency_ms",
                    start,
                    start + 10 * MINUTE,
                    step_ms=10 * MINUTE,
                    stats=["count"],
                )
                assert result.series
                assert result.series[0].stats["count"] == (float(n),)

            eventually(all_visible)
        yield server, start, times, values, dyno, status
    finally:
        server.stop()


def _expected(times, values, keys, start, step):  # type: ignore[no-untyped-def]
    groups: dict[tuple[object, int], list[int]] = defaultdict(list)
    buckets = start + (times - times % MINUTE - start) // step * step
    for i, (key, bucket) in enumerate(zip(keys, buckets.tolist(), strict=True)):
        groups[(key, bucket)].append(i)
    return {k: values[np.array(v)] for k, v in groups.items()}


@pytest.mark.parametrize("step", [MINUTE, 5 * MINUTE])
@pytest.mark.parametrize("group_by", [(), ("dyno",), ("dyno", "status")])
def test_stats_match_numpy(loaded, step: int, group_by: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    server, start, times, values, dyno, status = loaded
    labels = {"dyno": [DYNOS[d] for d in dyno], "status": [STATUSES[s] for s in status]}
    keys = (
        list(zip(*(labels[name] for name in group_by), strict=True))
        if group_by
        else [()] * len(values)
    )
    expected = _expected(times, values, keys, start, step)

    with Client(server.target) as client:
        result = client.query_range(
            "shop",
            "router.latency_ms",
            start,
            start + 10 * MINUTE,
            step_ms=step,
            stats=STATS,
            group_by=group_by,
        )
    assert result.served_by == "sqlite"
    assert len(result.series) == len({k for k, _ in expected})
    checked = 0
    for series in result.series:
        key = tuple(series.labels[name] for name in group_by)
        assert list(series.times_ms) == sorted(series.times_ms)
        for t, row in series.rows():
            sample = expected[(key, t)]
            assert row["count"] == sample.size
            assert row["min"] == sample.min()
            assert row["max"] == sample.max()
            assert row["sum"] == pytest.approx(sample.sum(), rel=1e-9)
            assert row["mean"] == pytest.approx(sample.mean(), rel=1e-9)
            for stat, q in (("p50", 50), ("p90", 90), ("p99", 99)):
                exact = np.percentile(sample, q)
                assert abs(row[stat] - exact) / exact <= 0.01, (stat, key, t, row[stat], exact)
            checked += 1
    assert checked == len(expected)
