"""Which reads answer a range query: hourly rollups where whole hours do,
minutes at the edges, and a view's stored metric where a view answers it
exactly (docs/architecture.md)."""

from __future__ import annotations

from dataclasses import dataclass

from metaas.server.config import ViewsConfig
from metaas.server.model import Labels, Resolution, view_metric
from metaas.server.query.stats import Stat


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
