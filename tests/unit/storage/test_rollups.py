"""Hourly rollups: the aggregator builds them beside the minutes, and a query
answered from them equals the same query answered from minutes."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest

from metaas.server.config import CodecConfig
from metaas.server.ingest.aggregator import Aggregator
from metaas.server.ingest.partials import write_pending
from metaas.server.ingest.records import SeriesBatch
from metaas.server.model import Labels, Partial, Resolution, SeriesKey
from metaas.server.query import QueryEngine, RangeQuery
from metaas.server.query.plan import plan_reads
from metaas.server.query.stats import Stat, evaluate_many, parse_stat
from metaas.server.sketch import Distribution
from metaas.server.storage import Storage, StorageContext, codec, open_storage
from metaas.server.storage.sqlite.schema import SCHEMA_VERSION
from tests.conformance.conftest import RETENTION_MS, FixedClock

MINUTE = 60_000
HOUR = 60 * MINUTE
NOW = 1_800_000_000_000 - 1_800_000_000_000 % HOUR + 17 * MINUTE  # 17 minutes into an hour


def _stat(name: str) -> Stat:
    stat = parse_stat(name)
    assert stat is not None, name
    return stat


STATS = tuple(_stat(name) for name in ("count", "sum", "min", "max", "p50", "p99"))


def stats_of(distributions: Iterable[Distribution]) -> list[list[float]]:
    """Each distribution's STATS, in order, as the query engine computes them."""
    columns = evaluate_many(STATS, list(distributions))
    return [list(values) for values in zip(*columns, strict=True)]


def batch(dyno: str, times: np.ndarray, values: np.ndarray) -> SeriesBatch:
    return SeriesBatch(SeriesKey.of("shop", "latency", {"dyno": dyno}), times, values)


def query(start: int, end: int, step: int, group_by: tuple[str, ...] = ()) -> RangeQuery:
    return RangeQuery("shop", "latency", (), start, end, step, STATS, group_by)


class Spy:
    """A reader that records what it was asked for."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.reads: list[tuple[int, int, Resolution, int]] = []

    async def read_partials(
        self,
        app: str,
        metric: str,
        start_ms: int,
        end_ms: int,
        resolution: Resolution = Resolution.MINUTE,
        series: Collection[SeriesKey] | None = None,
    ) -> Sequence[Partial]:
        found = await self.inner.read_partials(app, metric, start_ms, end_ms, resolution, series)
        self.reads.append((start_ms, end_ms, resolution, len(found)))
        return found

    async def find_series(
        self, app: str, metric: str, start_ms: int, end_ms: int, matchers: Labels
    ) -> Sequence[SeriesKey]:
        return await self.inner.find_series(app, metric, start_ms, end_ms, matchers)


@pytest.fixture
async def stored(tmp_path: Path) -> AsyncIterator[Storage]:
    """Eight hours of three dynos, flushed through the aggregator as the
    server does, in two flushes (the second adds late samples as deltas)."""
    clock = FixedClock(NOW)
    storage = await open_storage(
        f"sqlite:///{tmp_path / 'db.sqlite'}", StorageContext(RETENTION_MS, clock=clock)
    )
    rng = np.random.default_rng(7)
    aggregator = Aggregator(hot_minutes=3)
    first = NOW - 8 * HOUR - 5 * MINUTE
    for dyno in ("web.1", "web.2", "worker.1"):
        times = np.sort(rng.integers(first, NOW, 20_000)).astype(np.int64)
        aggregator.apply([batch(dyno, times, rng.lognormal(3.0, 1.0, times.size))])
    await write_pending(storage, aggregator.take_dirty(), writer="w1", epoch=1)
    aggregator.evict(NOW)
    late = np.sort(rng.integers(first, NOW - HOUR, 500)).astype(np.int64)
    aggregator.apply([batch("web.1", late, rng.lognormal(3.0, 1.0, late.size))])
    await write_pending(storage, aggregator.take_dirty(), writer="w1", epoch=2)
    yield storage
    await storage.close()


async def reference(storage: Storage, q: RangeQuery) -> dict[tuple[object, int], list[float]]:
    """The query answered from minutes alone, the simplest way."""
    merged: dict[tuple[object, int], Distribution] = {}
    for p in await storage.read_partials(q.app, q.metric, q.start_ms, q.end_ms):
        group = tuple((name, p.series.label_map.get(name, "")) for name in q.group_by)
        bucket = q.start_ms + (p.minute_ms - q.start_ms) // q.step_ms * q.step_ms
        if (group, bucket) in merged:
            merged[(group, bucket)].merge(p.distribution)
        else:
            merged[(group, bucket)] = p.distribution.copy()
    return dict(zip(merged, stats_of(merged.values()), strict=True))


def answers(groups: Sequence[object]) -> dict[tuple[object, int], list[float]]:
    found = {}
    for group in groups:
        for i, at in enumerate(group.times_ms):  # type: ignore[attr-defined]
            found[(group.labels, at)] = [column[i] for column in group.values]  # type: ignore[attr-defined]
    return found


def covered(spy: Spy, resolution: Resolution) -> tuple[int, int]:
    """The range the spy's reads at ``resolution`` covered, checking that
    they follow one another with no gap or overlap (a range is read in
    pieces)."""
    ranges = [(s, e) for s, e, r, _ in spy.reads if r is resolution]
    assert ranges
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert start == end
    return ranges[0][0], ranges[-1][1]


def assert_same(
    got: dict[tuple[object, int], list[float]], want: dict[tuple[object, int], list[float]]
) -> None:
    assert got.keys() == want.keys()
    for key, values in want.items():
        for stat, a, b in zip(STATS, got[key], values, strict=True):
            if stat.name == "sum":
                assert a == pytest.approx(b, rel=1e-12), key
            else:
                assert a == b, (key, stat)


@pytest.mark.parametrize("group_by", [(), ("dyno",)])
@pytest.mark.parametrize(
    ("start_offset", "step"),
    [(-8 * HOUR, 2 * HOUR), (-8 * HOUR, HOUR), (-7 * HOUR, 3 * HOUR), (-9 * HOUR, 24 * HOUR)],
)
async def test_a_query_from_rollups_equals_the_query_from_minutes(
    stored: Storage, start_offset: int, step: int, group_by: tuple[str, ...]
) -> None:
    start = Resolution.HOUR.floor(NOW) + start_offset
    q = query(start, NOW + 5 * MINUTE, step, group_by)
    spy = Spy(stored)
    got = answers(
        await QueryEngine(retention_ms=RETENTION_MS, clock=FixedClock(NOW)).query_range(spy, q)
    )  # type: ignore[arg-type]
    assert_same(got, await reference(stored, q))
    # Whole hours came from rollups; minutes only for the unfinished last hour.
    assert covered(spy, Resolution.HOUR) == (start, Resolution.HOUR.floor(NOW))
    assert covered(spy, Resolution.MINUTE) == (Resolution.HOUR.floor(NOW), q.end_ms)
    assert sum(n for _, _, _, n in spy.reads) <= 3 * (8 + 1) + 3 * 18


async def test_queries_not_on_whole_hours_read_minutes(stored: Storage) -> None:
    start = Resolution.HOUR.floor(NOW) - 6 * HOUR
    for q in (query(start + MINUTE, NOW, 2 * HOUR), query(start, NOW, 90 * MINUTE)):
        spy = Spy(stored)
        got = answers(
            await QueryEngine(retention_ms=RETENTION_MS, clock=FixedClock(NOW)).query_range(spy, q)
        )  # type: ignore[arg-type]
        assert_same(got, await reference(stored, q))
        assert {r for _, _, r, _ in spy.reads} == {Resolution.MINUTE}


def test_plan_reads_covers_the_range_exactly_once() -> None:
    hour = Resolution.HOUR.floor(NOW)
    q = query(hour - 10 * HOUR, hour + 30 * MINUTE, 2 * HOUR)
    # The retention cut the start to a minute inside an hour: that hour's
    # rest comes from minutes, the whole hours after it from rollups.
    clipped = hour - 10 * HOUR + 25 * MINUTE
    assert sorted(plan_reads(q, clipped)) == [
        (clipped, hour - 9 * HOUR, Resolution.MINUTE),
        (hour - 9 * HOUR, hour, Resolution.HOUR),
        (hour, hour + 30 * MINUTE, Resolution.MINUTE),
    ]
    short = query(hour, hour + 50 * MINUTE, 2 * HOUR)
    assert plan_reads(short, hour) == [(hour, hour + 50 * MINUTE, Resolution.MINUTE)]
    # Before --rollups-from (data stored before rollups existed), minutes.
    week = query(hour - 10 * HOUR, hour, 2 * HOUR)
    assert sorted(plan_reads(week, hour - 10 * HOUR, hour - 3 * HOUR - MINUTE)) == [
        (hour - 10 * HOUR, hour - 3 * HOUR, Resolution.MINUTE),
        (hour - 3 * HOUR, hour, Resolution.HOUR),
    ]
    assert plan_reads(week, hour - 10 * HOUR, hour) == [(hour - 10 * HOUR, hour, Resolution.MINUTE)]


def test_aggregator_keeps_each_hour_as_the_merge_of_its_minutes() -> None:
    rng = np.random.default_rng(3)
    aggregator = Aggregator(hot_minutes=3)
    times = np.sort(rng.integers(NOW - 2 * HOUR, NOW, 5_000)).astype(np.int64)
    values = rng.normal(100.0, 10.0, times.size)
    for part in np.array_split(np.arange(times.size), 7):  # several requests
        aggregator.apply([batch("web.1", times[part], values[part])])
    pending = aggregator.take_dirty()
    hours = {p.minute_ms: p.distribution for p in pending if p.resolution is Resolution.HOUR}
    assert set(hours) == {Resolution.HOUR.floor(int(t)) for t in times}
    for hour, rollup in hours.items():
        inside = (times >= hour) & (times < hour + HOUR)
        assert rollup.count == int(inside.sum())
        assert rollup.min == values[inside].min()
        assert rollup.max == values[inside].max()
        expected = Distribution.from_values(values[inside])
        assert rollup.sketch.to_bytes() == expected.sketch.to_bytes()
    assert all(p.complete for p in pending)

    # An hour stays in memory (complete) until its last minute leaves the hot
    # window; a late sample after that is a delta, like a late minute.
    aggregator.evict(NOW)
    aggregator.apply([batch("web.1", np.array([NOW - MINUTE], np.int64), np.array([1.0]))])
    current = [p for p in aggregator.take_dirty() if p.resolution is Resolution.HOUR]
    assert [(p.minute_ms, p.complete) for p in current] == [(Resolution.HOUR.floor(NOW), True)]
    assert current[0].distribution.count == hours[Resolution.HOUR.floor(NOW)].count + 1
    aggregator.evict(NOW + 2 * HOUR)
    assert len(aggregator) == 0
    aggregator.apply([batch("web.1", np.array([NOW - HOUR], np.int64), np.array([1.0]))])
    late = aggregator.take_dirty()
    assert {(p.resolution, p.complete) for p in late} == {
        (Resolution.MINUTE, False),
        (Resolution.HOUR, False),
    }


async def test_a_version_1_sqlite_file_gets_its_rollups_on_open(tmp_path: Path) -> None:
    """Files written before rollups existed are brought up to date."""
    path = tmp_path / "old.sqlite"
    hour = Resolution.HOUR.floor(NOW) - 2 * HOUR
    rows = [
        (hour + m * MINUTE, writer, Distribution.from_values(np.array([float(m), 2.0 * m])))
        for m in (0, 5, 59, 60)
        for writer in ("w1", "w2")
    ]
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE partials (app TEXT NOT NULL, metric TEXT NOT NULL, "
            "minute INTEGER NOT NULL, labels TEXT NOT NULL, writer TEXT NOT NULL, "
            "epoch INTEGER NOT NULL, distribution BLOB NOT NULL, "
            "PRIMARY KEY (app, metric, minute, labels, writer)) WITHOUT ROWID"
        )
        connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        connection.execute("INSERT INTO schema_version VALUES (1)")
        connection.executemany(
            "INSERT INTO partials VALUES ('shop', 'latency', ?, '{}', ?, ?, ?)",
            [
                (minute, writer, minute // MINUTE, codec.encode_distribution(d, CodecConfig()).data)
                for minute, writer, d in rows
            ],
        )
    storage = await open_storage(
        f"sqlite:///{path}", StorageContext(RETENTION_MS, clock=FixedClock(NOW))
    )
    try:
        hours = await storage.read_partials(
            "shop", "latency", hour, hour + 2 * HOUR, Resolution.HOUR
        )
    finally:
        await storage.close()
    found = {(p.minute_ms, p.writer): (p.epoch, p.distribution.count) for p in hours}
    first_epoch = hour // MINUTE
    assert found == {
        (hour, "w1"): (first_epoch + 59, 6),
        (hour, "w2"): (first_epoch + 59, 6),
        (hour + HOUR, "w1"): (first_epoch + 60, 2),
        (hour + HOUR, "w2"): (first_epoch + 60, 2),
    }
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version FROM schema_version").fetchall() == [
            (SCHEMA_VERSION,)
        ]


async def test_rebuild_writes_the_rollups_minutes_lack(tmp_path: Path) -> None:
    """Minutes stored without rollups (as by a release before them) get
    theirs, and long-range answers equal the answers from minutes."""
    from click.testing import CliRunner

    from metaas.server.cli.main import main
    from metaas.server.storage.rollups import rollups_of

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    now = time.time_ns() // 1_000_000
    first = Resolution.HOUR.floor(now) - 6 * HOUR
    rng = np.random.default_rng(11)
    minutes = [
        Partial(
            SeriesKey.of("shop", "latency", {"dyno": dyno}),
            first + m * MINUTE,
            writer,
            m,
            Distribution.from_values(rng.lognormal(3.0, 1.0, 30)),
        )
        for m in range(0, 5 * 60, 7)
        for dyno in ("web.1", "web.2")
        for writer in ("w1", "w2")
    ]
    storage = await open_storage(url, StorageContext(RETENTION_MS))
    await storage.write_partials(minutes)
    assert await storage.read_partials("shop", "latency", first, now, Resolution.HOUR) == []
    await storage.close()

    result = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        ["rollups", "rebuild", "--storage", url, "--app", "shop", "--since", "1d"],
    )
    assert result.exit_code == 0, result.output
    assert "rebuilt 20 hourly rollups" in result.output  # 5 hours x 2 dynos x 2 writers

    storage = await open_storage(url, StorageContext(RETENTION_MS))
    try:
        hours = await storage.read_partials("shop", "latency", first, now, Resolution.HOUR)
        expected = rollups_of(minutes)
        assert {(p.key, p.epoch, p.distribution.to_bytes()) for p in hours} == {
            (p.key, p.epoch, p.distribution.to_bytes()) for p in expected
        }
        q = query(first, first + 6 * HOUR, 2 * HOUR, ("dyno",))
        engine = QueryEngine(retention_ms=RETENTION_MS, clock=FixedClock(now))
        assert_same(answers(await engine.query_range(storage, q)), await reference(storage, q))
    finally:
        await storage.close()
