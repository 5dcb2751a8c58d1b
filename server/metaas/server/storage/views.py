"""Views rebuilt from the stored series.

The flusher writes every view beside its series (docs/architecture.md,
"Views"). Data stored by a release without views, or before a label was
added to ``--views``, has none: queries read its series while
``--views-from`` says so. ``metaas views rebuild`` runs this over a range of
an app, through the storage contract, so it works on every backend; then
``--views-from`` can be unset. Like ``rollups rebuild``, run it over hours
that have left the writers' memory (older than the hot window).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from metaas.server.model import Partial, Resolution, SeriesKey, is_view, views_of
from metaas.server.sketch import Distribution
from metaas.server.storage.base import Storage
from metaas.server.storage.rollups import rollups_of

_HOUR = Resolution.HOUR


@dataclass(slots=True)
class ViewsProgress:
    hours_total: int = 0
    hours_done: int = 0
    partials_written: int = 0


def views_from_series(minutes: Sequence[Partial], projections: tuple[str, ...]) -> list[Partial]:
    """Each writer's view partials of each minute, merged from its series'
    ``minutes`` (views among them are left out); a view's epoch is the
    newest of its members'."""
    groups: dict[tuple[SeriesKey, str, int], list[Partial]] = {}
    views_by_series: dict[SeriesKey, list[SeriesKey]] = {}
    for minute in minutes:
        if minute.resolution is not Resolution.MINUTE or is_view(minute.series.metric):
            continue
        views = views_by_series.get(minute.series)
        if views is None:
            views = views_by_series[minute.series] = views_of(minute.series, projections)
        for view in views:
            groups.setdefault((view, minute.writer, minute.minute_ms), []).append(minute)
    return [
        Partial(
            view,
            minute_ms,
            writer,
            max(p.epoch for p in members),
            Distribution.merged([p.distribution for p in members]),
        )
        for (view, writer, minute_ms), members in groups.items()
    ]


async def rebuild(
    storage: Storage,
    app: str,
    start_ms: int,
    end_ms: int,
    projections: tuple[str, ...],
    *,
    metrics: Sequence[str] = (),
) -> AsyncIterator[ViewsProgress]:
    """Rewrite the views (minutes and hourly rollups) of every hour that
    ``[start_ms, end_ms)`` touches from that hour's series minutes; yields
    progress after each metric-hour."""
    wanted = set(metrics)
    first = _HOUR.floor(start_ms)
    listed = await storage.list_series(app, first, end_ms)
    names = sorted(
        {s.metric for s in listed if not is_view(s.metric) and (not wanted or s.metric in wanted)}
    )
    hours = range(first, end_ms, _HOUR)
    progress = ViewsProgress(hours_total=len(names) * len(hours))
    yield progress
    for metric in names:
        for hour in hours:
            minutes = await storage.read_partials(app, metric, hour, hour + _HOUR)
            views = views_from_series(minutes, projections)
            written = [*views, *rollups_of(views)]
            if written:
                await storage.write_partials(written)
            progress.hours_done += 1
            progress.partials_written += len(written)
            yield progress
