"""The data each scenario writes or sends, built before any load runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from metaas.v1 import ingest_pb2

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
METRIC = "router.latency_ms"
STATS = ["p50", "p99", "max", "count"]


def _latencies(rng: np.random.Generator, n: int) -> np.ndarray:
    """Router latencies in ms: lognormal around 20 ms with a long tail."""
    return rng.lognormal(mean=3.0, sigma=0.8, size=n)


def _series(
    app: str, labels: dict[str, str], times: np.ndarray, values: np.ndarray, metric: str = METRIC
) -> ingest_pb2.SeriesSamples:
    series = ingest_pb2.SeriesSamples(app=app, metric=metric, labels=labels)
    series.times_ms.extend(times.tolist())
    series.values.extend(values.tolist())
    return series


def ingest_requests(
    app: str,
    now_ms: int,
    *,
    count: int = 8,
    series: int = 100,
    samples: int = 10_000,
    seed: int = 8,
) -> list[bytes]:
    """``count`` distinct serialized ``Write`` requests of ``samples`` samples
    each, over ``series`` series (one per dyno) of one app, stamped within the
    minute before ``now_ms``, without idempotency keys."""
    rng = np.random.default_rng(seed)
    per_series = samples // series
    requests = []
    for _ in range(count):
        request = ingest_pb2.WriteRequest()
        for dyno in range(series):
            times = np.sort(rng.integers(now_ms - MINUTE_MS, now_ms, per_series))
            labels = {"dyno": f"web.{dyno}", "status": "2xx"}
            request.series.append(_series(app, labels, times, _latencies(rng, per_series)))
        requests.append(request.SerializeToString())
    return requests


@dataclass(frozen=True, slots=True)
class Written:
    """Requests that put a known data set into a server, and a query over it."""

    requests: list[ingest_pb2.WriteRequest]
    samples: int
    query: dict[str, Any]  # QueryRangeRequest fields, as ghz's -d takes them
    points: int  # buckets the query returns


def one_hour(app: str, now_ms: int, *, per_minute: int = 120, seed: int = 1) -> Written:
    """One series with ``per_minute`` samples in each of the last 60 minutes,
    and the query for it at a 1-minute step."""
    rng = np.random.default_rng(seed)
    current = now_ms - now_ms % MINUTE_MS
    start = current - 59 * MINUTE_MS
    minutes = np.repeat(np.arange(start, current + MINUTE_MS, MINUTE_MS), per_minute)
    times = minutes + rng.integers(0, MINUTE_MS, minutes.size)
    times = np.minimum(times, now_ms)
    request = ingest_pb2.WriteRequest(
        series=[_series(app, {"dyno": "web.1"}, times, _latencies(rng, times.size))]
    )
    query = {
        "app": app,
        "metric": METRIC,
        "start_ms": start,
        "end_ms": current + MINUTE_MS,
        "step_ms": MINUTE_MS,
        "stats": STATS,
    }
    return Written([request], int(times.size), query, 60)


def seven_days(
    app: str, now_ms: int, *, series: int = 10, per_minute: int = 3, seed: int = 7
) -> Written:
    """``series`` series with ``per_minute`` samples in every minute of the
    last 7 days (one request: 302,400 samples by default), and the query over
    them at a 2-hour step: the dashboard's longest view. Like a dashboard, the
    query starts on a multiple of its step."""
    rng = np.random.default_rng(seed)
    step = 2 * HOUR_MS
    end = now_ms - now_ms % MINUTE_MS + MINUTE_MS
    first = end - 7 * DAY_MS
    start = first - first % step
    minutes = np.repeat(np.arange(first, end, MINUTE_MS), per_minute)
    request = ingest_pb2.WriteRequest()
    total = 0
    for dyno in range(series):
        times = np.minimum(minutes + rng.integers(0, MINUTE_MS, minutes.size), now_ms)
        request.series.append(
            _series(app, {"dyno": f"web.{dyno}"}, times, _latencies(rng, times.size))
        )
        total += int(times.size)
    query = {
        "app": app,
        "metric": METRIC,
        "start_ms": start,
        "end_ms": end,
        "step_ms": step,
        "stats": STATS,
    }
    return Written([request], total, query, -(-(end - start) // step))


def many_series(
    app: str, now_ms: int, *, series: int = 100_000, per_series: int = 10, seed: int = 100
) -> list[ingest_pb2.WriteRequest]:
    """``series`` distinct series (one per instance) with ``per_series``
    samples each in the current minute, 10,000 series per request."""
    rng = np.random.default_rng(seed)
    requests = []
    per_request = 10_000
    for first in range(0, series, per_request):
        request = ingest_pb2.WriteRequest()
        for n in range(first, min(first + per_request, series)):
            times = rng.integers(now_ms - 30_000, now_ms, per_series)
            labels = {"instance": f"i-{n:06d}"}
            request.series.append(
                _series(app, labels, times, rng.normal(512, 64, per_series), "dyno.memory_mb")
            )
        requests.append(request)
    return requests
