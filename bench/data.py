"""The data each scenario writes or sends, built before any load runs."""

from __future__ import annotations

from collections.abc import Iterator
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


# The tenant scenario: router latency of one app, labelled by dyno and status.
STATUSES = ("2xx", "3xx", "4xx", "5xx")
ONE_SERIES = {"dyno": "web.1", "status": "2xx"}
# Per Write: the server takes up to 10,000 series and 500,000 samples (16 MiB).
_MAX_SERIES = 10_000
_MAX_SAMPLES = 400_000


def tenant_labels(series: int) -> list[dict[str, str]]:
    """``series / 4`` dynos x the four status classes (fewer than four series:
    one dyno each, 2xx). The first is always ``ONE_SERIES``."""
    if series < len(STATUSES):
        return [{"dyno": f"web.{n + 1}", "status": "2xx"} for n in range(series)]
    if series % len(STATUSES):
        raise ValueError(f"{series} series: a tenant has fewer than 4 or a multiple of 4")
    return [{"dyno": f"web.{d + 1}", "status": s} for d in range(series // 4) for s in STATUSES]


@dataclass(frozen=True, slots=True)
class Tenant:
    """One app's router latency: the last 60 minutes (up to ``now_ms``) at
    ``per_minute`` samples per series-minute; before them, from the start of
    the hour ``history_hours`` before the end of the current minute, one
    sample per series every ``history_every_h`` hours (series staggered, so
    every hour holds the same share of them)."""

    app: str
    series: int
    now_ms: int
    per_minute: int = 10
    history_hours: int = 0
    history_every_h: int = 1
    seed: int = 13

    @property
    def current_minute(self) -> int:
        return self.now_ms - self.now_ms % MINUTE_MS

    @property
    def recent_start(self) -> int:
        return self.current_minute - 59 * MINUTE_MS

    @property
    def history_start(self) -> int:
        first = self.current_minute + MINUTE_MS - self.history_hours * HOUR_MS
        return first - first % HOUR_MS

    @property
    def samples(self) -> int:
        return self.series * 60 * self.per_minute + self.history_samples

    @property
    def history_samples(self) -> int:
        hours = -(-(self.recent_start - self.history_start) // HOUR_MS)
        every = self.history_every_h
        return sum(len(range((-n) % every, hours, every)) for n in range(self.series))

    def requests(self) -> Iterator[ingest_pb2.WriteRequest]:
        """The Writes, built one at a time, oldest data first: a bucket is
        then nearly always stored whole, not merged into a stored row."""
        rng = np.random.default_rng(self.seed)
        labels = tenant_labels(self.series)
        yield from self._history(rng, labels)
        yield from self._recent(rng, labels)

    def _history(
        self, rng: np.random.Generator, labels: list[dict[str, str]]
    ) -> Iterator[ingest_pb2.WriteRequest]:
        every = self.history_every_h
        hours = np.arange(self.history_start, self.recent_start, HOUR_MS)
        block = max(1, _MAX_SAMPLES * every // max(1, self.series))
        for first in range(0, hours.size, block):
            span = hours[first : first + block]
            for chunk in range(0, self.series, _MAX_SERIES):
                request = ingest_pb2.WriteRequest()
                for n in range(chunk, min(chunk + _MAX_SERIES, self.series)):
                    mine = span[(np.arange(first, first + span.size) + n) % every == 0]
                    if not mine.size:
                        continue
                    ends = np.minimum(mine + HOUR_MS, self.recent_start)
                    times = mine + (rng.random(mine.size) * (ends - mine)).astype(np.int64)
                    request.series.append(
                        _series(self.app, labels[n], times, _latencies(rng, times.size))
                    )
                if request.series:
                    yield request

    def _recent(
        self, rng: np.random.Generator, labels: list[dict[str, str]]
    ) -> Iterator[ingest_pb2.WriteRequest]:
        minutes = np.arange(self.recent_start, self.current_minute + MINUTE_MS, MINUTE_MS)
        per_slice = max(1, _MAX_SAMPLES // (self.series * self.per_minute))
        per_request = max(1, min(_MAX_SERIES, _MAX_SAMPLES // (per_slice * self.per_minute)))
        for first in range(0, minutes.size, per_slice):
            starts = np.repeat(minutes[first : first + per_slice], self.per_minute)
            for chunk in range(0, self.series, per_request):
                request = ingest_pb2.WriteRequest()
                for n in range(chunk, min(chunk + per_request, self.series)):
                    times = np.minimum(
                        starts + rng.integers(0, MINUTE_MS, starts.size), self.now_ms
                    )
                    request.series.append(
                        _series(self.app, labels[n], times, _latencies(rng, times.size))
                    )
                yield request


# Query windows of the tenant scenario: (range, step).
WINDOWS = {
    "1h/1min": (HOUR_MS, MINUTE_MS),
    "24h/5min": (DAY_MS, 5 * MINUTE_MS),
    "7d/1h": (7 * DAY_MS, HOUR_MS),
}
# Query shapes of the tenant scenario: QueryRange fields beside the range.
SHAPES: dict[str, dict[str, Any]] = {
    "merged": {},
    "by_status": {"group_by": ["status"]},
    "one_series": {"matchers": ONE_SERIES},
    "by_dyno": {"group_by": ["dyno"]},
}


def tenant_query(app: str, now_ms: int, window: str, shape: str) -> dict[str, Any]:
    """A dashboard's query: up to the end of the current minute, starting on a
    multiple of the step."""
    span, step = WINDOWS[window]
    end = now_ms - now_ms % MINUTE_MS + MINUTE_MS
    start = end - span
    start -= start % step
    return {
        "app": app,
        "metric": METRIC,
        "start_ms": start,
        "end_ms": end,
        "step_ms": step,
        "stats": STATS,
        **SHAPES[shape],
    }


def tenant_ingest_requests(
    app: str,
    now_ms: int,
    *,
    series: int = 10_000,
    per_request: int = 100,
    samples: int = 10_000,
    seed: int = 14,
) -> list[bytes]:
    """The ingest scenario's 10,000-sample ``Write``s over a whole tenant:
    request k holds series k * ``per_request`` onwards of ``tenant_labels``
    (25 dynos x 4 statuses), so the requests together cover every series.
    Stamped within the minute before ``now_ms``, without idempotency keys."""
    rng = np.random.default_rng(seed)
    labels = tenant_labels(series)
    per_series = samples // per_request
    requests = []
    for first in range(0, series, per_request):
        request = ingest_pb2.WriteRequest()
        for n in range(first, min(first + per_request, series)):
            times = np.sort(rng.integers(now_ms - MINUTE_MS, now_ms, per_series))
            request.series.append(_series(app, labels[n], times, _latencies(rng, per_series)))
        requests.append(request.SerializeToString())
    return requests
