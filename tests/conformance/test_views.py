"""Views are exact, on every backend: a query answered from a view equals the
same query answered by merging its member series (count, min and max
exactly, sum to 1e-9 relative, quantiles identical), across two writers, late
data merged into stored rows, a crash replay and a restart."""

from __future__ import annotations

import math
import shutil
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import pytest

from metaas.server.api.intake import write_batch
from metaas.server.api.validation import validate_write
from metaas.server.config import IngestConfig, LimitsConfig, ViewsConfig
from metaas.server.ingest.pipeline import IngestPipeline
from metaas.server.model import Labels, Partial, Resolution, SeriesKey, view_metric
from metaas.server.query import QueryEngine, RangeQuery, ResultGroup
from metaas.server.query.stats import parse_stat
from metaas.server.storage import Storage
from metaas.server.telemetry import noop
from metaas.v1 import ingest_pb2
from tests.conformance.conftest import RETENTION_MS, FixedClock
from tests.unit.ingest.test_pipeline import crash

MINUTE = 60_000
HOUR = 3_600_000
VIEWS = ViewsConfig(("status",))
STATS = tuple(
    s
    for s in (parse_stat(n) for n in ("count", "sum", "min", "max", "p50", "p99", "p999"))
    if s is not None
)
DYNOS = ("web.1", "web.2", "worker.1")
STATUSES = ("2xx", "3xx", "4xx", "5xx")


class Spy:
    """A reader that records which metrics were read."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.metrics: set[str] = set()

    async def read_partials(
        self,
        app: str,
        metric: str,
        start_ms: int,
        end_ms: int,
        resolution: Resolution,
        series: Collection[SeriesKey] | None = None,
    ) -> Sequence[Partial]:
        self.metrics.add(metric)
        return await self.inner.read_partials(app, metric, start_ms, end_ms, resolution, series)

    async def find_series(
        self, app: str, metric: str, start_ms: int, end_ms: int, matchers: Labels
    ) -> Sequence[SeriesKey]:
        return await self.inner.find_series(app, metric, start_ms, end_ms, matchers)


def _pipeline(wal: Path, storage: Storage, clock: FixedClock) -> IngestPipeline:
    config = IngestConfig(wal_dir=wal, flush_interval_s=3600, hot_minutes=1)
    return IngestPipeline(
        config,
        retention_ms=RETENTION_MS,
        storage=storage,
        clock=clock,
        telemetry=noop(),
        views=VIEWS,
    )


async def _write(
    p: IngestPipeline, clock: FixedClock, rng: np.random.Generator, minutes: Sequence[int]
) -> None:
    series = []
    for dyno in DYNOS:
        for status in STATUSES:
            size = int(rng.integers(1, 30))
            series.append(
                ingest_pb2.SeriesSamples(
                    app="shop",
                    metric="latency",
                    labels={"dyno": dyno, "status": status},
                    times_ms=[int(rng.choice(minutes)) + int(rng.integers(0, MINUTE))] * size,
                    values=rng.lognormal(3.0, 1.2, size).tolist(),
                )
            )
    # A series without the projected label groups as "".
    series.append(
        ingest_pb2.SeriesSamples(
            app="shop",
            metric="latency",
            labels={"dyno": "cron"},
            times_ms=[minutes[0]],
            values=[7.5],
        )
    )
    request = ingest_pb2.WriteRequest(series=series)
    batches, accepted = validate_write(
        request, now_ms=clock.now_ms(), retention_ms=RETENTION_MS, limits=LimitsConfig()
    )
    await p.write(write_batch(request, batches, accepted), caller="router-7")


def _query(
    start: int,
    end: int,
    step: int,
    *,
    matchers: Labels = (),
    group_by: tuple[str, ...] = (),
) -> RangeQuery:
    return RangeQuery("shop", "latency", matchers, start, end, step, STATS, group_by)


def _assert_exact(views: list[ResultGroup], series: list[ResultGroup]) -> None:
    assert [g.labels for g in views] == [g.labels for g in series]
    for got, want in zip(views, series, strict=True):
        assert got.times_ms == want.times_ms
        for stat, got_values, want_values in zip(STATS, got.values, want.values, strict=True):
            if stat.name == "sum":
                for a, b in zip(got_values, want_values, strict=True):
                    assert math.isclose(a, b, rel_tol=1e-9)
            else:  # count, min, max exactly; quantiles from the same buckets
                assert got_values == want_values, stat.name


async def test_views_answer_exactly_as_their_series(
    tmp_path: Path, storage: Storage, clock: FixedClock
) -> None:
    rng = np.random.default_rng(7)
    base = Resolution.HOUR.floor(clock.now) - 2 * HOUR
    minutes = [base + k * MINUTE for k in range(0, 180, 7)]
    clock.now = base + 10 * MINUTE

    # Two writers.
    first = _pipeline(tmp_path / "wal-1", storage, clock)
    second = _pipeline(tmp_path / "wal-2", storage, clock)
    await first.start()
    await second.start()
    await _write(first, clock, rng, minutes[:2])
    await _write(second, clock, rng, minutes[:2])
    await first.flush()
    await second.flush()

    # Late data: the minutes left memory; their samples merge into stored rows.
    clock.now = base + 3 * HOUR
    await first.flush()
    await _write(first, clock, rng, minutes[:2])
    await first.flush()

    # A crash: the second writer's log is replayed by a new run.
    await _write(second, clock, rng, minutes)
    saved = tmp_path / "saved"
    shutil.copytree(tmp_path / "wal-2", saved)
    await crash(second)
    shutil.rmtree(tmp_path / "wal-2")
    shutil.copytree(saved, tmp_path / "wal-2")
    replayed = _pipeline(tmp_path / "wal-2", storage, clock)
    await replayed.start()
    await replayed.flush()

    # A restart of the first writer.
    await first.stop()
    restarted = _pipeline(tmp_path / "wal-1", storage, clock)
    await restarted.start()
    await _write(restarted, clock, rng, minutes)
    await restarted.stop()
    await replayed.stop()

    with_views = QueryEngine(retention_ms=RETENTION_MS, clock=clock, views=VIEWS)
    series_only = QueryEngine(retention_ms=RETENTION_MS, clock=clock)
    end = base + 3 * HOUR
    cases = {
        "merged, 1 min": (_query(base, end, MINUTE), ""),
        "merged, 5 min": (_query(base, end, 5 * MINUTE), ""),
        "merged, hourly": (_query(base, end, HOUR), ""),
        "by status": (_query(base, end, 5 * MINUTE, group_by=("status",)), "status"),
        "status 2xx": (_query(base, end, MINUTE, matchers=(("status", "2xx"),)), "status"),
        "by status, hourly": (_query(base, end, HOUR, group_by=("status",)), "status"),
    }
    for name, (query, view) in cases.items():
        spy = Spy(storage)
        from_views = await with_views.query_range(spy, query)  # type: ignore[arg-type]
        assert spy.metrics == {view_metric("latency", view or None)}, name
        from_series = await series_only.query_range(storage, query)
        assert from_series, name
        _assert_exact(from_views, from_series)
    # A query the views cannot answer reads the series.
    spy = Spy(storage)
    by_dyno = _query(base, end, MINUTE, group_by=("dyno",))
    await with_views.query_range(spy, by_dyno)  # type: ignore[arg-type]
    assert spy.metrics == {"latency"}


@pytest.mark.parametrize("views_from_minutes", [0, 37, 120])
async def test_views_from_reads_series_before_it(
    tmp_path: Path, storage: Storage, clock: FixedClock, views_from_minutes: int
) -> None:
    """Before ``views.from_ms`` a query reads series (no bucket from both)."""
    rng = np.random.default_rng(11)
    base = Resolution.HOUR.floor(clock.now) - 2 * HOUR
    clock.now = base + 3 * HOUR
    p = _pipeline(tmp_path / "wal", storage, clock)
    await p.start()
    await _write(p, clock, rng, [base + k * MINUTE for k in range(0, 180, 11)])
    await p.stop()
    views = ViewsConfig(("status",), from_ms=base + views_from_minutes * MINUTE)
    with_views = QueryEngine(retention_ms=RETENTION_MS, clock=clock, views=views)
    series_only = QueryEngine(retention_ms=RETENTION_MS, clock=clock)
    for query in (_query(base, base + 3 * HOUR, HOUR), _query(base, base + 3 * HOUR, MINUTE)):
        _assert_exact(
            await with_views.query_range(storage, query),
            await series_only.query_range(storage, query),
        )
