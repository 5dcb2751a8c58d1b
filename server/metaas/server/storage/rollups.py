"""Hourly rollups rebuilt from the stored minutes.

The flusher writes every hour's rollup beside its minutes. Minutes stored by
a release without rollups (Cassandra and DynamoDB data from before schema
version 2) have none, and queries on whole hours would miss them; SQLite
files build theirs when first opened. ``metaas rollups rebuild`` runs this
over a range of an app, through the storage contract, so it works on every
backend. Run it over hours that have left the writers' memory (older than
the hot window): a writer merging a late sample into an hour while it is
rebuilt could lose one of the two.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from metaas.server.model import Partial, Resolution, SeriesKey
from metaas.server.sketch import Distribution
from metaas.server.storage.base import Storage

_HOUR = Resolution.HOUR


@dataclass(slots=True)
class RebuildProgress:
    hours_total: int = 0
    hours_done: int = 0
    rollups_written: int = 0


def rollups_of(minutes: Sequence[Partial]) -> list[Partial]:
    """Each writer's hourly rollup of each series, merged from ``minutes``
    in minute order; its epoch is the newest of its minutes'."""
    groups: dict[tuple[SeriesKey, str, int], list[Partial]] = {}
    for minute in sorted(minutes, key=lambda p: p.minute_ms):
        if minute.resolution is Resolution.MINUTE:
            key = (minute.series, minute.writer, _HOUR.floor(minute.minute_ms))
            groups.setdefault(key, []).append(minute)
    return [
        Partial(
            series,
            hour,
            writer,
            max(p.epoch for p in members),
            Distribution.merged([p.distribution for p in members]),
            _HOUR,
        )
        for (series, writer, hour), members in groups.items()
    ]


async def rebuild(
    storage: Storage,
    app: str,
    start_ms: int,
    end_ms: int,
    *,
    metrics: Sequence[str] = (),
) -> AsyncIterator[RebuildProgress]:
    """Rewrite the rollups of every hour that ``[start_ms, end_ms)`` touches
    from that hour's minutes; yields progress after each metric-hour."""
    wanted = set(metrics)
    first = _HOUR.floor(start_ms)
    listed = await storage.list_series(app, first, end_ms)
    names = sorted({s.metric for s in listed if not wanted or s.metric in wanted})
    hours = range(first, end_ms, _HOUR)
    progress = RebuildProgress(hours_total=len(names) * len(hours))
    yield progress
    for metric in names:
        for hour in hours:
            minutes = await storage.read_partials(app, metric, hour, hour + _HOUR)
            rollups = rollups_of(minutes)
            if rollups:
                await storage.write_partials(rollups)
            progress.hours_done += 1
            progress.rollups_written += len(rollups)
            yield progress
