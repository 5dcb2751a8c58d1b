"""The query engine's pieces and pacing: the same answer as one read, a
bound on the answer's size, work that stops when the query is cancelled,
and an event loop that keeps turning while a heavy query computes."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Collection, Sequence

import numpy as np
import pytest

from metaas.server.model import Labels, Partial, Resolution, SeriesKey, matches
from metaas.server.query import answer as answer_module
from metaas.server.query import engine
from metaas.server.query.engine import (
    QueryEngine,
    RangeQuery,
    ResultGroup,
    ResultTooLarge,
    first_units,
    next_units,
    piece_end,
)
from metaas.server.query.pacing import Pacer
from metaas.server.query.stats import Stat, evaluate_many, parse_stat
from metaas.server.sketch import Distribution
from tests.conformance.conftest import RETENTION_MS, FixedClock

MINUTE = 60_000
HOUR = 3_600_000
NOW = 1_800_000_000_000
START = NOW - 2 * HOUR
STATS: tuple[Stat, ...] = tuple(
    s for s in map(parse_stat, ("count", "sum", "min", "max", "mean", "p50", "p99")) if s
)


class MemoryReader:
    """Partials held in memory, answered in SQLite's order (minute, labels,
    writer); records each read and can wait before answering."""

    def __init__(self, partials: list[Partial]) -> None:
        self.partials = sorted(partials, key=lambda p: (p.minute_ms, p.series.labels, p.writer))
        self.reads: list[tuple[int, int, Resolution]] = []
        self.finds: list[Labels] = []
        self.delay_s = 0.0
        self.fifth_read = asyncio.Event()

    async def read_partials(
        self,
        app: str,
        metric: str,
        start_ms: int,
        end_ms: int,
        resolution: Resolution = Resolution.MINUTE,
        series: Collection[SeriesKey] | None = None,
    ) -> Sequence[Partial]:
        self.reads.append((start_ms, end_ms, resolution))
        if len(self.reads) == 5:
            self.fifth_read.set()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return [
            p
            for p in self.partials
            if p.series.app == app
            and p.series.metric == metric
            and p.resolution is resolution
            and start_ms <= p.minute_ms < end_ms
            and (series is None or p.series in series)
        ]

    async def find_series(
        self, app: str, metric: str, start_ms: int, end_ms: int, matchers: Labels
    ) -> Sequence[SeriesKey]:
        self.finds.append(matchers)
        found = {
            p.series
            for p in self.partials
            if p.series.app == app
            and p.series.metric == metric
            and start_ms <= p.minute_ms < end_ms
            and matches(p.series.labels, matchers)
        }
        return sorted(found, key=lambda s: s.labels)


def partials(series: int, minutes: int, writers: int = 1, distinct: int = 64) -> list[Partial]:
    """``series`` series of ``minutes`` minutes from START, from each writer;
    the distributions cycle through ``distinct`` random ones (the engine never
    changes a distribution, so sharing them is safe)."""
    rng = np.random.default_rng(5)
    pool = [
        Distribution.from_values(rng.lognormal(3.0, 1.0, int(rng.integers(1, 40))))
        for _ in range(distinct)
    ]
    cycle = itertools.cycle(pool)
    return [
        Partial(
            SeriesKey.of("shop", "latency", {"dyno": f"web.{s}", "status": f"{s % 3}xx"}),
            START + m * MINUTE,
            f"w{w}",
            1,
            next(cycle),
        )
        for s in range(series)
        for m in range(minutes)
        for w in range(writers)
    ]


def query(
    step: int = MINUTE,
    group_by: tuple[str, ...] = (),
    stats: tuple[Stat, ...] = STATS,
    max_values: int | None = None,
    start: int = START,
) -> RangeQuery:
    return RangeQuery(
        "shop", "latency", (), start, START + 2 * HOUR, step, stats, group_by, max_values
    )


def run(reader: MemoryReader, q: RangeQuery) -> list[ResultGroup]:
    engine_ = QueryEngine(retention_ms=RETENTION_MS, clock=FixedClock(NOW))
    return asyncio.run(engine_.query_range(reader, q))  # type: ignore[arg-type]


def one_merge(stored: list[Partial], q: RangeQuery) -> dict[Labels, dict[int, list[float]]]:
    """The answer from one read, each bucket merged at once, in read order."""
    by_bucket: dict[Labels, dict[int, list[Distribution]]] = {}
    for p in sorted(stored, key=lambda p: (p.minute_ms, p.series.labels, p.writer)):
        if not q.start_ms <= p.minute_ms < q.end_ms:
            continue
        group = tuple((name, p.series.label_map.get(name, "")) for name in q.group_by)
        bucket = q.start_ms + (p.minute_ms - q.start_ms) // q.step_ms * q.step_ms
        by_bucket.setdefault(group, {}).setdefault(bucket, []).append(p.distribution)
    answer = {}
    for group, buckets in by_bucket.items():
        merged = [Distribution.merged(buckets[t]) for t in sorted(buckets)]
        columns = evaluate_many(q.stats, merged)
        answer[group] = {
            t: [column[i] for column in columns] for i, t in enumerate(sorted(buckets))
        }
    return answer


def as_dict(groups: list[ResultGroup]) -> dict[Labels, dict[int, list[float]]]:
    return {
        g.labels: {t: [column[i] for column in g.values] for i, t in enumerate(g.times_ms)}
        for g in groups
    }


@pytest.mark.parametrize(
    ("step", "group_by", "start"),
    [
        (MINUTE, (), START),
        (7 * MINUTE, ("status",), START),
        # One bucket, filled by every piece (not on whole hours: minutes).
        (2 * HOUR, (), START + MINUTE),
        (MINUTE, ("dyno",), START),
    ],
    ids=["minutes", "7 minutes by status", "one bucket", "by dyno"],
)
def test_reading_in_pieces_gives_the_answer_of_one_merge(
    monkeypatch: pytest.MonkeyPatch, step: int, group_by: tuple[str, ...], start: int
) -> None:
    stored = partials(series=30, minutes=90, writers=2)
    q = query(step, group_by, start=start)
    monkeypatch.setattr(engine, "PIECE_ROWS", 25)
    monkeypatch.setattr(answer_module, "_MERGE_STEP", 7)
    monkeypatch.setattr(answer_module, "_GROUP_STEP", 11)
    monkeypatch.setattr(answer_module, "_EVALUATE_STEP", 5)
    reader = MemoryReader(stored)
    got = run(reader, q)
    assert [g.labels for g in got] == sorted(g.labels for g in got)
    # Bit for bit, sums included: each bucket merges in the order read.
    assert as_dict(got) == one_merge(stored, q)
    assert len(reader.reads) > 50
    for (_, end, _), (start, _, _) in itertools.pairwise(reader.reads):
        assert start == end  # the pieces follow one another, no gap, no overlap
    assert reader.reads[0][0] == q.start_ms
    assert reader.reads[-1][1] == q.end_ms


async def test_a_light_query_repeated_takes_one_read() -> None:
    reader = MemoryReader(partials(series=3, minutes=120))
    engine_ = QueryEngine(retention_ms=RETENTION_MS, clock=FixedClock(NOW))
    first = await engine_.query_range(reader, query())  # type: ignore[arg-type]
    assert len(reader.reads) > 1  # the density was not known yet
    reader.reads.clear()
    assert await engine_.query_range(reader, query()) == first  # type: ignore[arg-type]
    assert reader.reads == [(START, START + 2 * HOUR, Resolution.MINUTE)]


def test_piece_sizes_follow_the_density_of_the_last_piece() -> None:
    minute = Resolution.MINUTE
    assert piece_end(START, START + HOUR, 1, minute) == START + MINUTE
    # A start inside a minute: the piece still holds one minute's start.
    assert piece_end(START + 1, START + HOUR, 1, minute) == START + 2 * MINUTE
    assert piece_end(START, START + 2 * MINUTE, 10, minute) == START + 2 * MINUTE
    rows = engine.PIECE_ROWS
    assert next_units(1, rows * 4) == 1  # denser than a piece per minute
    assert next_units(1, rows // 2) == 2
    assert next_units(1, 1) == 4  # grows at most fourfold
    assert next_units(8, 0) == 32
    assert first_units(None) == engine.FIRST_UNITS
    assert first_units(rows * 2.0) == 1
    assert first_units(rows / 60) == 60


def test_an_answer_over_the_bound_is_refused_before_the_rest_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine, "PIECE_ROWS", 100)
    stored = partials(series=100, minutes=120)
    two = STATS[:2]
    full = 100 * 120 * len(two)  # groups x buckets x stats
    assert len(run(MemoryReader(stored), query(group_by=("dyno",), stats=two, max_values=full)))
    reader = MemoryReader(stored)
    with pytest.raises(ResultTooLarge) as caught:
        run(reader, query(group_by=("dyno",), stats=two, max_values=1_000))
    error = caught.value
    assert error.values > 1_000
    assert error.groups == 100
    assert error.stats == 2
    assert "at most 1,000" in str(error)
    # Refused early: the first piece, and the few minutes after it.
    assert reader.reads[-1][1] <= START + (engine.FIRST_UNITS + 10) * MINUTE


async def test_a_cancelled_query_stops_reading_and_merging() -> None:
    stored = partials(series=200, minutes=120)
    reader = MemoryReader(stored)
    reader.delay_s = 0.001
    engine_ = QueryEngine(retention_ms=RETENTION_MS, clock=FixedClock(NOW))
    task = asyncio.create_task(engine_.query_range(reader, query()))  # type: ignore[arg-type]
    async with asyncio.timeout(10):
        await reader.fifth_read.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    reads = len(reader.reads)
    await asyncio.sleep(0.1)
    assert len(reader.reads) == reads  # no piece read after the cancellation
    assert reads < 20
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


async def test_a_heavy_query_hands_the_loop_back() -> None:
    # One group, 2,000 series: every bucket merges 2,000 distributions.
    reader = MemoryReader(partials(series=2_000, minutes=20))
    engine_ = QueryEngine(retention_ms=RETENTION_MS, clock=FixedClock(NOW))
    gaps: list[float] = []
    done = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    started = time.perf_counter()
    await engine_.query_range(reader, query())  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    done = True
    await ticking
    # Unpaced, the longest gap is the whole query; paced, it is one slice.
    assert len(gaps) > 20
    assert max(gaps) < elapsed / 4


async def test_the_pacer_yields_once_its_slice_is_used() -> None:
    now = [0.0]
    pacer = Pacer(0.005, clock=lambda: now[0])
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    asyncio.get_running_loop().call_soon(lambda: None)
    task = asyncio.create_task(other())
    await pacer.pause()  # no time has passed: no yield
    assert not ran
    now[0] = 0.006
    await pacer.pause()
    assert ran == ["other"]
    await task
