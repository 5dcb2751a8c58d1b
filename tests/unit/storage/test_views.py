"""Views for data stored before them: the SQLite upgrade derives them when a
file is opened, and ``metaas views rebuild`` writes them on any backend."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from metaas.server.config import ViewsConfig
from metaas.server.model import Partial, Resolution, SeriesKey, view_metric, views_of
from metaas.server.query import QueryEngine, RangeQuery
from metaas.server.query.stats import parse_stat
from metaas.server.sketch import Distribution
from metaas.server.storage import Storage, StorageContext, open_storage
from metaas.server.storage.rollups import rollups_of
from metaas.server.storage.views import rebuild
from tests.conformance.conftest import RETENTION_MS, FixedClock

MINUTE = 60_000
HOUR = 3_600_000
NOW = 1_800_000_000_000
STATS = tuple(
    s for s in (parse_stat(n) for n in ("count", "sum", "max", "p50", "p99")) if s is not None
)


def _series_partials(hour: int) -> list[Partial]:
    """Series minutes only, as a release without views stored them."""
    rng = np.random.default_rng(3)
    partials = []
    for dyno in ("web.1", "web.2"):
        for status in ("2xx", "5xx"):
            series = SeriesKey.of("shop", "latency", {"dyno": dyno, "status": status})
            for minute in range(0, 90, 7):
                for writer in ("w1", "w2"):
                    values = rng.lognormal(3.0, 1.0, int(rng.integers(1, 20)))
                    partials.append(
                        Partial(
                            series,
                            hour + minute * MINUTE,
                            writer,
                            minute,
                            Distribution.from_values(values),
                        )
                    )
    return partials


async def _assert_views_answer_as_series(storage: Storage, hour: int, clock: FixedClock) -> None:
    views = QueryEngine(retention_ms=RETENTION_MS, clock=clock, views=ViewsConfig(("status",)))
    series = QueryEngine(retention_ms=RETENTION_MS, clock=clock)
    for step in (MINUTE, HOUR):
        for group_by in ((), ("status",)):
            query = RangeQuery("shop", "latency", (), hour, hour + 2 * HOUR, step, STATS, group_by)
            got = await views.query_range(storage, query)
            want = await series.query_range(storage, query)
            assert got
            assert [(g.labels, g.times_ms) for g in got] == [(g.labels, g.times_ms) for g in want]
            for a, b in zip(got, want, strict=True):
                assert a.values[0] == b.values[0]  # count
                assert np.allclose(a.values[1], b.values[1], rtol=1e-9)  # sum
                assert a.values[2:] == b.values[2:]  # max and quantiles


async def test_a_version_2_sqlite_file_gets_its_views_on_open(tmp_path: Path) -> None:
    clock = FixedClock(NOW)
    hour = Resolution.HOUR.floor(NOW) - 3 * HOUR
    path = tmp_path / "old.sqlite"
    context = StorageContext(RETENTION_MS, clock=clock)
    storage = await open_storage(f"sqlite:///{path}", context)
    try:
        partials = _series_partials(hour)
        await storage.write_partials(partials)
        await storage.write_partials(rollups_of(partials))
    finally:
        await storage.close()
    with sqlite3.connect(path) as connection:  # as a release before views left it
        connection.execute("UPDATE schema_version SET version = 2")
        connection.execute("DELETE FROM partials WHERE metric LIKE '%#%'")
        connection.execute("DELETE FROM hourly WHERE metric LIKE '%#%'")
    storage = await open_storage(f"sqlite:///{path}", context)
    try:
        stored = await storage.read_partials("shop", view_metric("latency", None), 0, NOW)
        assert stored, "the whole-metric view was derived"
        await _assert_views_answer_as_series(storage, hour, clock)
    finally:
        await storage.close()


@pytest.mark.parametrize("projections", [("status",), ("status", "dyno")])
async def test_rebuild_writes_the_views_series_lack(
    tmp_path: Path, projections: tuple[str, ...]
) -> None:
    clock = FixedClock(NOW)
    hour = Resolution.HOUR.floor(NOW) - 3 * HOUR
    context = StorageContext(RETENTION_MS, clock=clock)
    storage = await open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}", context)
    try:
        partials = _series_partials(hour)
        await storage.write_partials(partials)
        await storage.write_partials(rollups_of(partials))
        steps = [
            step async for step in rebuild(storage, "shop", hour, hour + 2 * HOUR, projections)
        ]
        assert steps[-1].hours_done == steps[-1].hours_total == 2
        assert steps[-1].partials_written > 0
        expected = {v.metric for p in partials for v in views_of(p.series, projections)}
        listed = {s.metric for s in await storage.list_series("shop", hour, hour + 2 * HOUR)}
        assert expected <= listed
        await _assert_views_answer_as_series(storage, hour, clock)
    finally:
        await storage.close()
