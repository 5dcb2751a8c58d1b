"""Domain types shared by ingest, storage and queries."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # the sketch package reads the time units from here
    from metaas.server.sketch import Distribution

Labels = tuple[tuple[str, str], ...]

# Time units, in milliseconds: every other module imports them from here.
MINUTE_MS: Final = 60_000
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """Identity of a series: app (the tenant), metric, and its sorted labels."""

    app: str
    metric: str
    labels: Labels = ()

    @classmethod
    def of(cls, app: str, metric: str, labels: dict[str, str] | None = None) -> SeriesKey:
        return cls(app, metric, tuple(sorted((labels or {}).items())))

    @property
    def labels_key(self) -> str:
        """Canonical text of the labels, used as a storage key component."""
        return encode_labels(self.labels)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def matches(labels: Labels, matchers: Labels) -> bool:
    """Whether sorted ``labels`` hold every one of ``matchers`` (name, value)."""
    if not matchers:
        return True
    held = dict(labels)
    return all(held.get(name) == value for name, value in matchers)


def encode_labels(labels: Labels) -> str:
    return json.dumps(dict(labels), separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def decode_labels(text: str) -> Labels:
    decoded: dict[str, str] = json.loads(text)
    return tuple(sorted(decoded.items()))


# Views (docs/architecture.md) are stored as metrics of their own, named
# ``<metric>#`` (the whole metric merged) and ``<metric>#<label>`` (its
# projection on one label). Metric names a write accepts cannot hold "#".
VIEW_MARK = "#"


def view_metric(metric: str, projection: str | None) -> str:
    """The stored metric of ``metric``'s view: merged whole (``None``) or
    projected on the label ``projection``."""
    return f"{metric}{VIEW_MARK}{projection or ''}"


def is_view(metric: str) -> bool:
    return VIEW_MARK in metric


def views_of(series: SeriesKey, projections: tuple[str, ...]) -> list[SeriesKey]:
    """The view series a sample of ``series`` also lands in: the whole
    metric's, then one per projection, labelled with the series' value of
    that label ("" when it has none, as a query groups it)."""
    labels = series.label_map
    views = [SeriesKey(series.app, view_metric(series.metric, None))]
    for name in projections:
        views.append(
            SeriesKey(series.app, view_metric(series.metric, name), ((name, labels.get(name, "")),))
        )
    return views


class Resolution(enum.IntEnum):
    """Length of the time bucket a partial aggregates, in milliseconds.

    Every sample lands in its minute's partial and in its hour's partial (the
    hourly rollup), so a long range reads one partial per series-hour instead
    of sixty. Both are written by the same flush, with the same epoch rules.
    """

    MINUTE = MINUTE_MS
    HOUR = HOUR_MS

    def floor(self, time_ms: int) -> int:
        """Start of the bucket holding ``time_ms``."""
        return time_ms - time_ms % self

    def ceil(self, time_ms: int) -> int:
        """The first bucket start at or after ``time_ms``."""
        return -(-time_ms // self) * self

    def last_minute(self, start_ms: int) -> int:
        """The last minute of the bucket starting at ``start_ms``: the bucket
        leaves the retention with it (and expires a retention after it)."""
        return start_ms + self - MINUTE_MS


@dataclass(frozen=True, slots=True)
class PartialKey:
    """Storage key of one writer's aggregate for one series and bucket.

    ``minute_ms`` is the bucket's first minute: any minute for
    :attr:`Resolution.MINUTE`, an hour's start for :attr:`Resolution.HOUR`.
    """

    series: SeriesKey
    minute_ms: int
    writer: str
    resolution: Resolution = Resolution.MINUTE

    @property
    def last_minute_ms(self) -> int:
        """The bucket's last minute: it leaves the retention with it."""
        return self.resolution.last_minute(self.minute_ms)


@dataclass(frozen=True, slots=True)
class Partial:
    """One writer's aggregate of one series over one minute (or, for an
    hourly rollup, one hour: see :class:`Resolution`).

    ``epoch`` is the writer's flush epoch that last produced this row: the row
    holds every sample of that writer's write-ahead-log segments up to and
    including ``epoch`` and none after it. Recovery uses it to apply a replayed
    segment exactly once.
    """

    series: SeriesKey
    minute_ms: int
    writer: str
    epoch: int
    distribution: Distribution = field(compare=False)
    resolution: Resolution = Resolution.MINUTE

    @property
    def key(self) -> PartialKey:
        return PartialKey(self.series, self.minute_ms, self.writer, self.resolution)

    @property
    def last_minute_ms(self) -> int:
        """The bucket's last minute: it leaves the retention with it."""
        return self.resolution.last_minute(self.minute_ms)
