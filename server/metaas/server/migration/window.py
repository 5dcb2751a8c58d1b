"""What the migration has seen lately: per-backend calls and comparisons
over a sliding window, per-minute history for the report, and recent
mismatches."""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from metaas.server.migration.compare import Comparison


@dataclass(frozen=True, slots=True)
class Call:
    at: float  # monotonic seconds
    role: str
    backend: str
    operation: str
    duration_s: float
    error: bool

    @property
    def is_read(self) -> bool:
        return self.operation in ("read_partials", "list_series")


@dataclass(frozen=True, slots=True)
class BackendSummary:
    role: str
    backend: str
    reads: int
    writes: int
    read_errors: int
    write_errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass(slots=True)
class MinutePoint:
    """One minute of history for one backend (reads only for latency)."""

    minute_ms: int
    latencies_ms: list[float] = field(default_factory=list)
    calls: int = 0
    errors: int = 0
    comparisons: int = 0
    mismatches: int = 0


class MigrationWindow:
    def __init__(
        self,
        *,
        window_s: float = 300.0,
        history_minutes: int = 24 * 60,
        keep_mismatches: int = 20,
        now: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.window_s = window_s
        self._now = now
        self._wall_ms = wall_ms
        self._calls: deque[Call] = deque()
        self._comparisons: deque[tuple[float, str, bool, bool]] = deque()  # at, app, ok, errored
        self._reads: deque[tuple[float, str, str, bool]] = deque()  # at, app, role, failed
        self.total_comparisons = 0
        self.total_mismatches = 0
        self.mismatches: deque[Comparison] = deque(maxlen=keep_mismatches)
        self._history: dict[str, deque[MinutePoint]] = defaultdict(
            lambda: deque(maxlen=history_minutes)
        )

    def record_call(
        self, role: str, backend: str, operation: str, duration_s: float, error: bool
    ) -> None:
        call = Call(self._now(), role, backend, operation, duration_s, error)
        self._calls.append(call)
        point = self._point(role)
        point.calls += 1
        point.errors += int(error)
        if call.is_read and not error:
            point.latencies_ms.append(duration_s * 1000)
        self._trim()

    def record_comparison(self, comparison: Comparison) -> None:
        errored = comparison.candidate.error is not None
        self._comparisons.append((self._now(), comparison.app, comparison.consistent, errored))
        self.total_comparisons += 1
        point = self._point(comparison.candidate.role)
        point.comparisons += 1
        if not comparison.consistent:
            self.total_mismatches += 1
            point.mismatches += 1
            self.mismatches.append(comparison)
        self._trim()

    def backends(self) -> list[BackendSummary]:
        self._trim()
        by_role: dict[tuple[str, str], list[Call]] = defaultdict(list)
        for call in self._calls:
            by_role[(call.role, call.backend)].append(call)
        summaries = []
        for (role, backend), calls in sorted(by_role.items()):
            reads = [c for c in calls if c.is_read]
            latencies = [c.duration_s * 1000 for c in reads if not c.error]
            p50, p95, p99 = (
                np.percentile(latencies, [50, 95, 99]).tolist() if latencies else [0.0] * 3
            )
            summaries.append(
                BackendSummary(
                    role,
                    backend,
                    reads=len(reads),
                    writes=len(calls) - len(reads),
                    read_errors=sum(c.error for c in reads),
                    write_errors=sum(c.error for c in calls if not c.is_read),
                    p50_ms=p50,
                    p95_ms=p95,
                    p99_ms=p99,
                )
            )
        return summaries

    def record_read(self, app: str, role: str, failed: bool) -> None:
        """An app's query served (or attempted) by ``role``."""
        self._reads.append((self._now(), app, role, failed))
        self._trim()

    def forget_app(self, app: str) -> None:
        """Start the app's guard-rail window afresh (after an operator acted)."""
        self._reads = deque(r for r in self._reads if r[1] != app)
        self._comparisons = deque(c for c in self._comparisons if c[1] != app)

    def rates(self, app: str, role: str) -> tuple[int, float, int, float]:
        """For one app over the window: reads by ``role`` and their error
        rate, comparisons and their mismatch rate."""
        self._trim()
        reads = [r for r in self._reads if r[1] == app and r[2] == role]
        failed = sum(1 for r in reads if r[3])
        compared = [c for c in self._comparisons if c[1] == app]
        mismatched = sum(1 for c in compared if not c[2])
        return (
            len(reads),
            failed / len(reads) if reads else 0.0,
            len(compared),
            mismatched / len(compared) if compared else 0.0,
        )

    def history(self) -> dict[str, list[MinutePoint]]:
        return {role: list(points) for role, points in self._history.items()}

    def _point(self, role: str) -> MinutePoint:
        minute = self._wall_ms() // 60_000 * 60_000
        points = self._history[role]
        if not points or points[-1].minute_ms != minute:
            points.append(MinutePoint(minute))
        return points[-1]

    def _trim(self) -> None:
        horizon = self._now() - self.window_s
        while self._calls and self._calls[0].at < horizon:
            self._calls.popleft()
        while self._comparisons and self._comparisons[0][0] < horizon:
            self._comparisons.popleft()
        while self._reads and self._reads[0][0] < horizon:
            self._reads.popleft()
