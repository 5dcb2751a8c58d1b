"""Comparing an authoritative answer with a shadow one (Scientist's
Observation and Result): immutable values, and the pure functions that
compare them. Both shadow paths (on the serving loop, in a worker process)
reach their verdict through ``compare_results`` and ``judge``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from metaas.server.model import MINUTE_MS
from metaas.server.query import RangeQuery, ResultGroup

MAX_DIFF_LINES = 5


@dataclass(frozen=True, slots=True)
class Observation:
    """One backend's answer to one read: its value or error, and duration."""

    role: str
    backend: str
    duration_s: float
    value: tuple[ResultGroup, ...] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Comparison:
    app: str
    metric: str
    stage: str
    at_ms: int
    primary: Observation
    candidate: Observation
    consistent: bool
    diff: tuple[str, ...] = ()

    @property
    def latency_delta_ms(self) -> float:
        """Candidate minus primary duration."""
        return (self.candidate.duration_s - self.primary.duration_s) * 1000


def judge(
    query: RangeQuery,
    stage: str,
    at_ms: int,
    primary: Observation,
    candidate: Observation,
    diff: tuple[str, ...],
) -> Comparison:
    """The comparison of two reads of ``query`` given their differences; a
    failed shadow read is a difference of its own."""
    if candidate.error is not None:
        diff = (f"shadow failed: {candidate.error}",)
    return Comparison(query.app, query.metric, stage, at_ms, primary, candidate, not diff, diff)


def newer_than_ms(now_ms: int, ignore_newest_minutes: int) -> int:
    """Buckets ending after this are not compared: both backends may still
    be catching up on the newest minutes."""
    return now_ms - now_ms % MINUTE_MS - ignore_newest_minutes * MINUTE_MS


def compare_results(
    primary: Sequence[ResultGroup],
    candidate: Sequence[ResultGroup],
    stat_names: Sequence[str],
    *,
    relative_tolerance: float,
    newer_than_ms: int,
    step_ms: int = 60_000,
) -> tuple[str, ...]:
    """Differences (at most MAX_DIFF_LINES), ignoring buckets that end after
    ``newer_than_ms`` (buckets of ``step_ms``): both sides may still be
    catching up on them. Empty means consistent."""
    diff: list[str] = []
    left = {g.labels: g for g in primary}
    right = {g.labels: g for g in candidate}
    for labels in sorted(set(left) | set(right)):
        name = "{" + ",".join(f"{k}={v}" for k, v in labels) + "}"
        a_points = _points(left.get(labels), newer_than_ms - step_ms)
        b_points = _points(right.get(labels), newer_than_ms - step_ms)
        for t in sorted(set(a_points) | set(b_points)):
            a, b = a_points.get(t), b_points.get(t)
            if a is None or b is None:
                diff.append(f"{name} {_at(t)}: only in {'primary' if b is None else 'shadow'}")
            else:
                for stat, x, y in zip(stat_names, a, b, strict=True):
                    if not _close(x, y, relative_tolerance):
                        diff.append(f"{name} {_at(t)} {stat}: primary={x:.6g} shadow={y:.6g}")
                        break
            if len(diff) >= MAX_DIFF_LINES:
                return tuple(diff)
    return tuple(diff)


def _at(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _points(group: ResultGroup | None, last_start_ms: int) -> dict[int, tuple[float, ...]]:
    """The group's points by bucket start, up to ``last_start_ms``."""
    if group is None:
        return {}
    return {
        t: tuple(column[i] for column in group.values)
        for i, t in enumerate(group.times_ms)
        if t <= last_start_ms
    }


def _close(x: float, y: float, tolerance: float) -> bool:
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return abs(x - y) <= tolerance * max(abs(x), abs(y)) or abs(x - y) <= 1e-12
