"""Answers range queries from stored partials.

A query whose start and step are whole hours reads the hourly rollups for
the whole hours of its range and minutes only for the partial hours at its
edges, so its cost grows with the hours (at most 720 in the retention) rather
than the minutes. Any other query reads minutes.

A heavy query must neither stall the other requests nor outlive its caller.
So each range is read in pieces of about PIECE_ROWS partials, each merged
into the answer as it arrives (the next piece is read meanwhile), and all
the work on the event loop runs in slices that hand it back (see
``pacing``): past the caller's deadline, no further piece is read and no
further slice runs. Only the answer's buckets are held, never the whole
range's partials, and an answer that would exceed the query's
``max_values`` is refused as soon as it does, before the rest is read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from metaas.server.clock import Clock
from metaas.server.config import ViewsConfig
from metaas.server.model import Labels, Partial, Resolution, SeriesKey, matches, view_metric
from metaas.server.query.pacing import Pacer
from metaas.server.query.stats import Stat, evaluate_many
from metaas.server.sketch import Distribution
from metaas.server.storage.base import PartialReader

# Partials one read should return. Backends may turn rows into partials on
# the event loop (SQLite does, at 5-7 microseconds each), so a piece holds it
# for about 10-15 ms; the piece after the first is sized from the density of
# the last. A piece spans at least one bucket however many series it holds.
PIECE_ROWS: Final = 2048
# The first piece of a metric not read yet: enough buckets that a light
# query (a dashboard panel's few series over its last minutes) takes one
# read, few enough that a heavy one's first piece stays small.
FIRST_UNITS: Final = 16
# A piece spans at most this many times the previous one's span, so a
# sparse stretch (little data yet) does not make the next piece huge.
_PIECE_GROWTH: Final = 4
# Metrics whose density the engine remembers (the least recently read go).
_DENSITIES_KEPT: Final = 4096
# Steps between pauses, each small enough that the pacer's slices stay short:
# partials put in their groups, distributions merged into one bucket, and
# buckets whose stats are computed together.
_GROUP_STEP: Final = 512
_MERGE_STEP: Final = 128
# Distributions merged in one batch of buckets (each of at most _MERGE_STEP).
_MERGE_BATCH: Final = 2048
_EVALUATE_STEP: Final = 128


_DensityKey = tuple[str, str, Resolution, int | None]


@dataclass(frozen=True, slots=True)
class RangeQuery:
    """A validated query. Minutes whose start lies in ``[start_ms, end_ms)``
    are merged into buckets ``start_ms + k * step_ms``."""

    app: str
    metric: str
    matchers: Labels
    start_ms: int
    end_ms: int
    step_ms: int
    stats: tuple[Stat, ...]
    group_by: tuple[str, ...]
    # Values (buckets with data x stats, over all groups) the answer may
    # hold; more raise ResultTooLarge before the rest is read. None: no bound.
    max_values: int | None = None


@dataclass(frozen=True, slots=True)
class ResultGroup:
    labels: Labels
    times_ms: tuple[int, ...]
    # One tuple of values per requested stat, aligned with times_ms.
    values: tuple[tuple[float, ...], ...]


class ResultTooLarge(Exception):
    """The answer would hold more values than the query allows."""

    def __init__(self, *, values: int, limit: int, groups: int, buckets: int, stats: int) -> None:
        super().__init__(
            f"the answer would hold at least {values:,} values ({buckets:,} buckets with data "
            f"in {groups:,} groups, x {stats} stats); at most {limit:,}"
        )
        self.values = values
        self.limit = limit
        self.groups = groups
        self.buckets = buckets
        self.stats = stats


class QueryEngine:
    def __init__(
        self,
        *,
        retention_ms: int,
        clock: Clock,
        rollups_from_ms: int = 0,
        views: ViewsConfig | None = None,
    ) -> None:
        self._retention_ms = retention_ms
        self._clock = clock
        self._rollups_from_ms = rollups_from_ms
        # None: no views are stored (every query reads its series).
        self._views = views
        # Partials per bucket of each metric and resolution, as last read:
        # the first piece of the next read is sized from it, so the queries
        # dashboards repeat take one read each.
        # Keyed by app, metric, resolution and the number of series selected
        # (None: all).
        self._densities: dict[_DensityKey, float] = {}

    async def query_range(self, reader: PartialReader, query: RangeQuery) -> list[ResultGroup]:
        """Groups sorted by labels; each with the buckets that have data."""
        start = max(query.start_ms, self._clock.now_ms() - self._retention_ms)
        if start >= query.end_ms:
            return []
        pacer = Pacer()
        answer = _Answer(query)
        sources = plan_sources(query, start, self._rollups_from_ms, self._views)
        selection: Sequence[SeriesKey] | None = None
        if query.matchers and any(metric == query.metric for metric, *_ in sources):
            # Storage narrows the series reads to the matching series: the
            # read costs what they hold, not what the metric stores.
            selection = await reader.find_series(
                query.app, query.metric, start, query.end_ms, query.matchers
            )
        for metric, first, end, resolution in sources:
            series = selection if metric == query.metric else None
            if series is not None and not series:
                continue  # no series matches: nothing to read
            key = (query.app, metric, resolution, None if series is None else len(series))
            units = first_units(self._densities.get(key))
            rows = await _read(
                reader, query, metric, first, end, resolution, series, units, answer, pacer
            )
            self._remember(key, rows / -(-(end - first) // resolution))
        results = []
        for group in sorted(answer.groups):
            # Popped: each group's distributions are released once it is done.
            results.append(await _result(group, answer.groups.pop(group), query.stats, pacer))
        return results

    def _remember(self, key: _DensityKey, density: float) -> None:
        self._densities.pop(key, None)
        if len(self._densities) >= _DENSITIES_KEPT:
            del self._densities[next(iter(self._densities))]  # the least recent
        self._densities[key] = density


def view_for(query: RangeQuery, views: ViewsConfig) -> str | None:
    """The view that answers ``query`` exactly: ``""`` for the whole metric
    (no matchers, no grouping), a projection's label when the matchers and
    the grouping name that label only; None when only the series can."""
    names = {name for name, _ in query.matchers} | set(query.group_by)
    if not names:
        return ""
    if len(names) == 1 and (name := next(iter(names))) in views.projections:
        return name
    return None


def plan_sources(
    query: RangeQuery, start_ms: int, rollups_from_ms: int = 0, views: ViewsConfig | None = None
) -> list[tuple[str, int, int, Resolution]]:
    """The reads that answer ``query`` from ``start_ms``: ``(metric, start,
    end, resolution)``, where ``metric`` is the query's own or the stored
    metric of the view that answers it (from ``views.from_ms`` on; whole
    buckets only, so no bucket is read from both)."""
    reads = plan_reads(query, start_ms, rollups_from_ms)
    view = view_for(query, views) if views is not None else None
    if view is None or views is None:
        return [(query.metric, first, end, resolution) for first, end, resolution in reads]
    stored = view_metric(query.metric, view or None)
    sources = []
    for first, end, resolution in reads:
        split = min(max(first, resolution.ceil(views.from_ms)), end)
        if first < split:
            sources.append((query.metric, first, split, resolution))
        if split < end:
            sources.append((stored, split, end, resolution))
    return sources


def plan_reads(
    query: RangeQuery, start_ms: int, rollups_from_ms: int = 0
) -> list[tuple[int, int, Resolution]]:
    """The reads that cover ``[start_ms, query.end_ms)``: ``(start, end,
    resolution)``. Hours are used where every bucket is a whole number of
    hours, so no hour straddles two buckets, and only from
    ``rollups_from_ms`` on."""
    hour, minute = Resolution.HOUR, Resolution.MINUTE
    end_ms = query.end_ms
    if query.start_ms % hour or query.step_ms % hour:
        return [(start_ms, end_ms, minute)]
    first_hour, end_hour = hour.ceil(max(start_ms, rollups_from_ms)), hour.floor(end_ms)
    if first_hour >= end_hour:
        return [(start_ms, end_ms, minute)]
    reads = [(first_hour, end_hour, hour)]
    if start_ms < first_hour:
        reads.append((start_ms, first_hour, minute))
    if end_hour < end_ms:
        reads.append((end_hour, end_ms, minute))
    return reads


async def _read(
    reader: PartialReader,
    query: RangeQuery,
    metric: str,
    first: int,
    end: int,
    resolution: Resolution,
    series: Sequence[SeriesKey] | None,
    units: int,
    answer: _Answer,
    pacer: Pacer,
) -> int:
    """Read ``[first, end)`` of ``series`` (None: all) in pieces, the first
    spanning ``units`` buckets, in time order, into ``answer``; each piece is
    merged while the next one is read. Returns the number of partials read."""

    def read(start: int, stop: int) -> asyncio.Task[Sequence[Partial]]:
        return asyncio.ensure_future(
            reader.read_partials(query.app, metric, start, stop, resolution, series)
        )

    rows = 0
    stop = piece_end(first, end, units, resolution)
    pending: asyncio.Task[Sequence[Partial]] | None = read(first, stop)
    try:
        while pending is not None:
            piece = await pending
            pending = None
            rows += len(piece)
            if stop < end:
                units = next_units(units, len(piece))
                start, stop = stop, piece_end(stop, end, units, resolution)
                pending = read(start, stop)
            await answer.add(piece, pacer)
    finally:
        if pending is not None:  # cancelled, or the answer is too large
            _abandon(pending)
    return rows


def _abandon(read: asyncio.Task[Sequence[Partial]]) -> None:
    """Cancel a read no longer wanted; one that already failed has its error
    taken, as the error being raised is another."""
    read.cancel()
    if read.done() and not read.cancelled():
        read.exception()


def piece_end(start: int, end: int, units: int, resolution: Resolution) -> int:
    """The end of a piece from ``start`` holding ``units`` bucket starts of
    ``resolution`` (fewer when ``end`` comes first)."""
    return min(end, resolution.ceil(start) + units * resolution)


def first_units(density: float | None) -> int:
    """The span of a read's first piece, in buckets, given the partials per
    bucket the last read of its metric found (None: not read yet)."""
    return max(1, int(PIECE_ROWS / density)) if density else FIRST_UNITS


def next_units(units: int, rows: int) -> int:
    """The span of the next piece, in buckets of its resolution, after one of
    ``units`` buckets returned ``rows`` partials."""
    wanted = PIECE_ROWS * units // rows if rows else units * _PIECE_GROWTH
    return max(1, min(wanted, units * _PIECE_GROWTH))


class _Answer:
    """The answer being built: each group's merged distribution per bucket."""

    def __init__(self, query: RangeQuery) -> None:
        self._query = query
        self.groups: dict[Labels, dict[int, Distribution]] = {}
        self._buckets = 0  # over all groups
        # Each series' group (None: filtered out), worked out once per series
        # and keyed by its labels: app and metric are the query's.
        self._group_of: dict[Labels, Labels | None] = {}

    async def add(self, partials: Sequence[Partial], pacer: Pacer) -> None:
        """Merge ``partials`` (later in time than those added before) in.
        Within a bucket the distributions merge in the order they were read,
        so sums are added in the same order as by one read of the range."""
        arrived: dict[tuple[Labels, int], list[Distribution]] = {}
        for first in range(0, len(partials), _GROUP_STEP):
            self._collect(partials[first : first + _GROUP_STEP], arrived)
            await pacer.pause()
        self._check_size(arrived)
        # Buckets of a few distributions are merged together, in batches
        # (Distribution.merged_groups); one of many, a step at a time.
        batch: list[tuple[dict[int, Distribution], int, list[Distribution]]] = []
        batched = 0
        for (group, bucket), distributions in arrived.items():
            by_time = self.groups.setdefault(group, {})
            held = by_time.get(bucket)
            members = distributions if held is None else [held, *distributions]
            if len(members) == 1:
                by_time[bucket] = members[0]  # nothing here changes a distribution
            elif len(members) > _MERGE_STEP:
                by_time[bucket] = await _merged(members, pacer)
                await pacer.pause()
            else:
                batch.append((by_time, bucket, members))
                batched += len(members)
                if batched >= _MERGE_BATCH:
                    _merge_batch(batch)
                    batch, batched = [], 0
                    await pacer.pause()
        _merge_batch(batch)

    def _collect(
        self, partials: Sequence[Partial], arrived: dict[tuple[Labels, int], list[Distribution]]
    ) -> None:
        query, group_of = self._query, self._group_of
        first, step = query.start_ms, query.step_ms
        for partial in partials:
            labels = partial.series.labels
            if labels in group_of:
                group = group_of[labels]
            else:
                series = partial.series
                matched = matches(series.labels, query.matchers)
                group = _group_labels(series, query.group_by) if matched else None
                group_of[labels] = group
            if group is None:
                continue
            key = (group, first + (partial.minute_ms - first) // step * step)
            if key in arrived:
                arrived[key].append(partial.distribution)
            else:
                arrived[key] = [partial.distribution]

    def _check_size(self, arrived: dict[tuple[Labels, int], list[Distribution]]) -> None:
        limit = self._query.max_values
        if limit is None:
            return
        groups = self.groups
        self._buckets += sum(1 for group, bucket in arrived if bucket not in groups.get(group, ()))
        stats = len(self._query.stats)
        if self._buckets * stats > limit:
            raise ResultTooLarge(
                values=self._buckets * stats,
                limit=limit,
                groups=len(groups.keys() | {group for group, _ in arrived}),
                buckets=self._buckets,
                stats=stats,
            )


def _merge_batch(batch: list[tuple[dict[int, Distribution], int, list[Distribution]]]) -> None:
    """Store each bucket's merged distribution into its group's buckets."""
    if batch:
        merged = Distribution.merged_groups([members for _, _, members in batch])
        for (by_time, bucket, _), distribution in zip(batch, merged, strict=True):
            by_time[bucket] = distribution


async def _merged(distributions: list[Distribution], pacer: Pacer) -> Distribution:
    """``Distribution.merged`` of all of them, a step at a time. Each step
    merges the result so far first, then the next distributions in order, so
    the sum is added in the same order as in one merge, and the result is
    the same."""
    # A bucket of one is used as is: nothing here changes a distribution.
    if len(distributions) == 1:
        return distributions[0]
    merged = Distribution.merged(distributions[:_MERGE_STEP])
    for first in range(_MERGE_STEP, len(distributions), _MERGE_STEP):
        await pacer.pause()
        merged = Distribution.merged([merged, *distributions[first : first + _MERGE_STEP]])
    return merged


def _group_labels(series: SeriesKey, group_by: Sequence[str]) -> Labels:
    labels = series.label_map
    return tuple((name, labels.get(name, "")) for name in group_by)


async def _result(
    group: Labels, by_time: dict[int, Distribution], stats: tuple[Stat, ...], pacer: Pacer
) -> ResultGroup:
    times = sorted(by_time)
    merged = [by_time[time_ms] for time_ms in times]
    columns: list[list[float]] = [[] for _ in stats]
    for first in range(0, len(merged), _EVALUATE_STEP):
        part = evaluate_many(stats, merged[first : first + _EVALUATE_STEP])
        for column, values in zip(columns, part, strict=True):
            column.extend(values)
        await pacer.pause()
    return ResultGroup(group, tuple(times), tuple(tuple(column) for column in columns))
