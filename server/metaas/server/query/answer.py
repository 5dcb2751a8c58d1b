"""The answer being built: partials merged into each group's buckets as
they arrive, a step at a time (see ``pacing``), and each group's stats."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from metaas.server.model import Labels, Partial, SeriesKey, matches
from metaas.server.query.pacing import Pacer
from metaas.server.query.plan import RangeQuery
from metaas.server.query.stats import Stat, evaluate_many
from metaas.server.sketch import Distribution

# Steps between pauses, each small enough that the pacer's slices stay short:
# partials put in their groups, distributions merged into one bucket, and
# buckets whose stats are computed together.
_GROUP_STEP: Final = 512
_MERGE_STEP: Final = 128
# Distributions merged in one batch of buckets (each of at most _MERGE_STEP).
_MERGE_BATCH: Final = 2048
_EVALUATE_STEP: Final = 128


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


class Answer:
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


async def result_of(
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
