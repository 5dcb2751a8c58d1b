"""Answers range queries from stored partials.

A query whose start and step are whole hours reads the hourly rollups for
the whole hours of its range and minutes only for the partial hours at its
edges, so its cost grows with the hours (at most 720 in the retention) rather
than the minutes. Any other query reads minutes. Which reads answer a query
is planned in ``plan``; the partials read are merged in ``answer``.

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
from typing import Final

from metaas.server.clock import Clock
from metaas.server.config import ViewsConfig
from metaas.server.model import Partial, Resolution, SeriesKey
from metaas.server.query.answer import Answer, ResultGroup, ResultTooLarge, result_of
from metaas.server.query.pacing import Pacer
from metaas.server.query.plan import RangeQuery, plan_sources
from metaas.server.storage.base import PartialReader
from metaas.server.storage.retention import Retention

__all__ = ["QueryEngine", "RangeQuery", "ResultGroup", "ResultTooLarge"]

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


_DensityKey = tuple[str, str, Resolution, int | None]


class QueryEngine:
    def __init__(
        self,
        *,
        retention_ms: int,
        clock: Clock,
        rollups_from_ms: int = 0,
        views: ViewsConfig | None = None,
    ) -> None:
        self._retention = Retention(retention_ms, clock)
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
        # Planned from the oldest minute the retention holds, so the hours
        # read whole start there (storage applies the retention to each read).
        start = self._retention.clamp(query.start_ms)
        if start >= query.end_ms:
            return []
        pacer = Pacer()
        answer = Answer(query)
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
            results.append(await result_of(group, answer.groups.pop(group), query.stats, pacer))
        return results

    def _remember(self, key: _DensityKey, density: float) -> None:
        self._densities.pop(key, None)
        if len(self._densities) >= _DENSITIES_KEPT:
            del self._densities[next(iter(self._densities))]  # the least recent
        self._densities[key] = density


async def _read(
    reader: PartialReader,
    query: RangeQuery,
    metric: str,
    first: int,
    end: int,
    resolution: Resolution,
    series: Sequence[SeriesKey] | None,
    units: int,
    answer: Answer,
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
