"""Typed inputs and results of the client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

TimeLike = int | datetime


def to_ms(value: TimeLike) -> int:
    """Unix milliseconds from an int (already ms) or an aware datetime."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("datetime must be timezone-aware")
        return int(value.timestamp() * 1000)
    return int(value)


@dataclass(frozen=True, slots=True)
class Series:
    """Samples of one series to write; ``times_ms`` and ``values`` align."""

    app: str
    metric: str
    times_ms: Sequence[int]
    values: Sequence[float]
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ResultSeries:
    """One group of a range query: bucket start times and, per stat, values."""

    labels: Mapping[str, str]
    times_ms: tuple[int, ...]
    stats: Mapping[str, tuple[float, ...]]

    def rows(self) -> list[tuple[int, dict[str, float]]]:
        """``(time_ms, {stat: value})`` per bucket."""
        return [
            (t, {name: values[i] for name, values in self.stats.items()})
            for i, t in enumerate(self.times_ms)
        ]


@dataclass(frozen=True, slots=True)
class QueryResult:
    series: tuple[ResultSeries, ...]
    served_by: str


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    metric: str
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class SeriesList:
    series: tuple[SeriesInfo, ...]
    metrics: tuple[str, ...]
