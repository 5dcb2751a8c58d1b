"""Domain types shared by ingest, storage and queries."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from metaas.server.sketch import Distribution

Labels = tuple[tuple[str, str], ...]


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


def encode_labels(labels: Labels) -> str:
    return json.dumps(dict(labels), separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def decode_labels(text: str) -> Labels:
    decoded: dict[str, str] = json.loads(text)
    return tuple(sorted(decoded.items()))


@dataclass(frozen=True, slots=True)
class PartialKey:
    """Storage key of one writer's aggregate for one series and minute."""

    series: SeriesKey
    minute_ms: int
    writer: str


@dataclass(frozen=True, slots=True)
class Partial:
    """One writer's aggregate of one series over one minute.

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

    @property
    def key(self) -> PartialKey:
        return PartialKey(self.series, self.minute_ms, self.writer)
