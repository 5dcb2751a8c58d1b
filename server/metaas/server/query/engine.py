"""Answers range queries from stored partials.

A query whose start and step are whole hours reads the hourly rollups for
the whole hours of its range and minutes only for the partial hours at its
edges, so its cost grows with the hours (at most 720 in the retention) rather
than the minutes. Any other query reads minutes.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from metaas.server.clock import Clock
from metaas.server.model import Labels, Partial, Resolution, SeriesKey
from metaas.server.query.stats import Stat, evaluate_many
from metaas.server.sketch import Distribution
from metaas.server.storage.base import PartialReader


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


@dataclass(frozen=True, slots=True)
class ResultGroup:
    labels: Labels
    times_ms: tuple[int, ...]
    # One tuple of values per requested stat, aligned with times_ms.
    values: tuple[tuple[float, ...], ...]


class QueryEngine:
    def __init__(self, *, retention_ms: int, clock: Clock, rollups_from_ms: int = 0) -> None:
        self._retention_ms = retention_ms
        self._clock = clock
        self._rollups_from_ms = rollups_from_ms

    async def query_range(self, reader: PartialReader, query: RangeQuery) -> list[ResultGroup]:
        """Groups sorted by labels; each with the buckets that have data."""
        start = max(query.start_ms, self._clock.now_ms() - self._retention_ms)
        if start >= query.end_ms:
            return []
        reads = await asyncio.gather(
            *(
                reader.read_partials(query.app, query.metric, first, end, resolution)
                for first, end, resolution in plan_reads(query, start, self._rollups_from_ms)
            )
        )
        partials: list[Partial] = [p for read in reads for p in read]
        # Each series' group (None: filtered out), worked out once per series.
        groups: dict[SeriesKey, Labels | None] = {}
        members: dict[Labels, dict[int, list[Distribution]]] = defaultdict(dict)
        first, step = query.start_ms, query.step_ms
        for partial in partials:
            series = partial.series
            if series in groups:
                group = groups[series]
            else:
                matched = _matches(series, query.matchers)
                group = groups[series] = _group_labels(series, query.group_by) if matched else None
            if group is None:
                continue
            bucket = first + (partial.minute_ms - first) // step * step
            by_time = members[group]
            if bucket in by_time:
                by_time[bucket].append(partial.distribution)
            else:
                by_time[bucket] = [partial.distribution]
        return [_result(group, by_time, query.stats) for group, by_time in sorted(members.items())]


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


def _merged(distributions: list[Distribution]) -> Distribution:
    # A bucket of one is used as is: nothing here changes a distribution.
    return distributions[0] if len(distributions) == 1 else Distribution.merged(distributions)


def _matches(series: SeriesKey, matchers: Labels) -> bool:
    labels = series.label_map
    return all(labels.get(name) == value for name, value in matchers)


def _group_labels(series: SeriesKey, group_by: Sequence[str]) -> Labels:
    labels = series.label_map
    return tuple((name, labels.get(name, "")) for name in group_by)


def _result(
    group: Labels, by_time: dict[int, list[Distribution]], stats: tuple[Stat, ...]
) -> ResultGroup:
    times = sorted(by_time)
    columns = evaluate_many(stats, [_merged(by_time[t]) for t in times])
    return ResultGroup(group, tuple(times), tuple(columns))
