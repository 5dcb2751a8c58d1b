"""Typed inputs and results of the client, and the conversion of times and
durations to the protocol's Unix milliseconds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

TimeLike = int | datetime
"""A point in time: Unix epoch milliseconds, or a timezone-aware datetime."""

DurationLike = int | timedelta
"""A length of time: milliseconds, or a timedelta."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)


def to_ms(value: TimeLike) -> int:
    """Unix milliseconds from an int (already ms) or an aware datetime.

    Raises ValueError for a naive datetime, whose zone would be a guess."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(
                f"datetime {value.isoformat()} has no timezone: give an aware datetime, "
                "for example datetime.now(UTC), or Unix milliseconds"
            )
        # timedelta arithmetic is exact; timestamp() * 1000 rounds through a float.
        return (value - _EPOCH) // _MILLISECOND
    return int(value)


def duration_ms(value: DurationLike, name: str) -> int:
    """Milliseconds from an int (already ms) or a timedelta.

    Raises ValueError, naming the argument ``name``, for a timedelta that is
    not a whole number of milliseconds."""
    if isinstance(value, timedelta):
        whole, rest = divmod(value, _MILLISECOND)
        if rest:
            raise ValueError(f"{name} {value} is not a whole number of milliseconds")
        return whole
    return int(value)


@dataclass(frozen=True, slots=True)
class Series:
    """Samples of one series to write; ``times_ms`` (Unix epoch milliseconds)
    and ``values`` (finite numbers) align one to one."""

    app: str
    metric: str
    times_ms: Sequence[int]
    values: Sequence[float]
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ResultSeries:
    """One group of a range query.

    ``labels`` holds the values of the ``group_by`` labels for this group
    (empty without ``group_by``). ``times_ms`` are the start times of the
    buckets that have data, ascending, in Unix epoch milliseconds. ``stats``
    maps each requested stat, in request order, to its values aligned with
    ``times_ms``: ``count`` values are ints, the other stats' floats."""

    labels: Mapping[str, str]
    times_ms: tuple[int, ...]
    # int | float reads as float to a type checker; it is spelled out because
    # count's values are ints at run time.
    stats: Mapping[str, tuple[int | float, ...]]

    def rows(self) -> list[tuple[int, dict[str, int | float]]]:
        """``(time_ms, {stat: value})`` per bucket."""
        return [
            (t, {name: values[i] for name, values in self.stats.items()})
            for i, t in enumerate(self.times_ms)
        ]


@dataclass(frozen=True, slots=True)
class QueryResult:
    """The answer of a range query: one :class:`ResultSeries` per group, and
    the name of the backend that served it (for example ``"sqlite"``)."""

    series: tuple[ResultSeries, ...]
    served_by: str


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    """One stored series: its metric name and its labels."""

    metric: str
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class SeriesList:
    """What an app has stored in a range: every distinct (metric, labels),
    sorted, and the distinct metric names among them, sorted."""

    series: tuple[SeriesInfo, ...]
    metrics: tuple[str, ...]
