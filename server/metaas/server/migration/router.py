"""Routes each app's reads and writes by its migration stage, runs sampled
shadow reads beside the authoritative one, compares, and falls back to the
old backend when the new one misbehaves in live or rampdown."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from opentelemetry import trace

from metaas.server.clock import Clock
from metaas.server.config import MigrationConfig
from metaas.server.migration.compare import Comparison, Observation, compare_results
from metaas.server.migration.flags import FixedFlags, FlagSource
from metaas.server.migration.shadow_pool import ShadowPool, Task
from metaas.server.migration.stages import PLANS, Plan, Role, Stage
from metaas.server.migration.window import MigrationWindow
from metaas.server.model import SeriesKey
from metaas.server.query import QueryEngine, RangeQuery, ResultGroup
from metaas.server.storage.base import Storage
from metaas.server.storage.errors import StorageError
from metaas.server.telemetry import Telemetry

log = logging.getLogger(__name__)
MINUTE_MS = 60_000
# Longest wait for a shadow worker's verdict beyond the shadow timeout.
_WORKER_STALL_S = 10.0


@dataclass(frozen=True, slots=True)
class Fallback:
    app: str
    stage: Stage  # cleared when an operator moves the app to another stage
    reason: str
    since_ms: int


@dataclass(frozen=True, slots=True)
class Routed:
    groups: list[ResultGroup]
    served_by: str
    stage: Stage
    # The shadow comparison, finishing after the answer (None: no shadow
    # read; a task yielding None: the check was shed under load).
    comparison: asyncio.Task[Comparison | None] | None


class MigrationRouter:
    def __init__(
        self,
        old: Storage,
        new: Storage | None,
        *,
        engine: QueryEngine,
        flags: FlagSource | None = None,
        config: MigrationConfig | None = None,
        window: MigrationWindow | None = None,
        telemetry: Telemetry,
        clock: Clock,
        sample: Callable[[], float] = random.random,
        shadow_pool: ShadowPool | None = None,
    ) -> None:
        self._storages = {Role.OLD: old} | ({Role.NEW: new} if new is not None else {})
        self._engine = engine
        self.flags = flags or FixedFlags()
        self.config = config or MigrationConfig()
        self.window = window or MigrationWindow(window_s=self.config.window_s)
        self._clock = clock
        self._sample = sample
        self._shadow_pool = shadow_pool
        self.fallbacks: dict[str, Fallback] = {}
        self._comparing: set[asyncio.Task[Comparison | None]] = set()
        meter = telemetry.meter
        self._comparisons = meter.create_counter(
            "metaas.migration.comparisons", unit="{comparison}", description="Shadow comparisons"
        )
        self._mismatches = meter.create_counter(
            "metaas.migration.mismatches", unit="{comparison}", description="Inconsistent ones"
        )
        self._skipped = meter.create_counter(
            "metaas.migration.shadow_skipped",
            unit="{read}",
            description="Sampled shadow reads skipped because the shadow workers were saturated",
        )
        self._fallback_counter = meter.create_counter(
            "metaas.migration.fallbacks", unit="{event}", description="Guard-rail fallbacks"
        )

    @property
    def enabled(self) -> bool:
        return Role.NEW in self._storages

    def storage(self, role: Role) -> Storage:
        return self._storages[role]

    def backend_name(self, role: Role) -> str:
        return self._storages[role].name if role in self._storages else ""

    def stage(self, app: str) -> Stage:
        return self.flags.stage(app) if self.enabled else Stage.OFF

    def write_targets(self, app: str) -> tuple[str, ...]:
        """Roles an app's writes go to, authoritative first."""
        return tuple(role.value for role in PLANS[self.stage(app)].writes)

    def authoritative(self, app: str) -> Storage:
        return self._storages[self._read_role(app, self.stage(app), PLANS[self.stage(app)])]

    async def list_series(
        self, app: str, start_ms: int, end_ms: int, metric: str | None
    ) -> tuple[Sequence[SeriesKey], str]:
        storage = self.authoritative(app)
        return await storage.list_series(app, start_ms, end_ms, metric), storage.name

    async def query_range(self, query: RangeQuery) -> Routed:
        app = query.app
        stage = self.stage(app)
        plan = PLANS[stage]
        role = self._read_role(app, stage, plan)
        shadow_role = plan.shadow if role is plan.reads else None
        checked = shadow_role is not None and self._sample() < self.flags.check_ratio(app)
        shadow = None
        if checked and self._shadow_pool is None:
            # On this loop: the shadow read starts with the primary one.
            assert shadow_role is not None
            shadow = asyncio.create_task(self._observe(shadow_role, query))

        try:
            primary, error = await self._observe_raising(role, query)
        except BaseException:
            # Cancelled (the caller's deadline passed) or refused (too large):
            # the shadow read of the same query stops too.
            _cancel(shadow)
            raise
        if error is not None and plan.fallback_allowed and role is Role.NEW:
            # The old backend still has every write: answer from it instead.
            self.window.record_read(app, role.value, True)
            self._check_guard(app, stage)
            _cancel(shadow)
            role, shadow, checked = Role.OLD, None, False
            primary, error = await self._observe_raising(role, query)
        self.window.record_read(app, role.value, error is not None)
        if error is not None:
            _cancel(shadow)
            raise error

        comparison: asyncio.Task[Comparison | None] | None = None
        if shadow is not None:
            # Answer now; the comparison finishes beside the next requests.
            comparison = asyncio.create_task(self._compare_later(query, stage, primary, shadow))
        elif checked and self._shadow_pool is not None and shadow_role is not None:
            # A worker process reads the shadow and compares with this answer.
            comparison = asyncio.create_task(
                self._compare_in_worker(self._shadow_pool, query, stage, primary, shadow_role)
            )
        if comparison is not None:
            self._comparing.add(comparison)
            comparison.add_done_callback(self._comparing.discard)
        self._check_guard(app, stage)
        assert primary.value is not None
        return Routed(list(primary.value), self.backend_name(role), stage, comparison)

    async def drain(self) -> None:
        """Wait for comparisons still running (each bounded by the shadow
        timeout), so their results are published before shutdown."""
        while self._comparing:
            await asyncio.gather(*self._comparing, return_exceptions=True)

    async def _compare_later(
        self,
        query: RangeQuery,
        stage: Stage,
        primary: Observation,
        shadow: asyncio.Task[Observation],
    ) -> Comparison:
        candidate = await self._await_shadow(shadow, primary)
        comparison = self._compare(query, stage, primary, candidate)
        self._publish(comparison)
        self._check_guard(query.app, stage)
        return comparison

    def _read_role(self, app: str, stage: Stage, plan: Plan) -> Role:
        fallback = self.fallbacks.get(app)
        if fallback is not None and fallback.stage is not stage:
            del self.fallbacks[app]  # an operator moved the app on
            self.window.forget_app(app)
            log.info("fallback for app %s cleared: stage is now %s", app, stage)
            fallback = None
        return Role.OLD if fallback is not None and plan.fallback_allowed else plan.reads

    async def _compare_in_worker(
        self, pool: ShadowPool, query: RangeQuery, stage: Stage, primary: Observation, role: Role
    ) -> Comparison | None:
        assert primary.value is not None
        now = self._clock.now_ms()
        timeout_s = self.config.shadow_timeout_s
        task = Task(
            role.value,
            query,
            primary.value,
            tuple(s.name for s in query.stats),
            self.config.relative_tolerance,
            self._newer_than_ms(now),
            timeout_s,
            time.time() + timeout_s,
        )
        # The worker bounds each read by the timeout and skips a task that
        # waited past it; this only guards against a worker that hangs.
        try:
            checked = await asyncio.wait_for(pool.check(task), _WORKER_STALL_S + 2 * timeout_s)
        except TimeoutError:
            checked = None
        if checked is None:  # skipped (see shadow_pool): neither consistent nor a mismatch
            self._skipped.add(1, {"stage": stage.value})
            return None
        candidate = Observation(
            role.value, self.backend_name(role), checked.duration_s, error=checked.error
        )
        comparison = _comparison(query, stage, now, primary, candidate, checked.diff)
        self._publish(comparison)
        self._check_guard(query.app, stage)
        return comparison

    async def _observe(self, role: Role, query: RangeQuery) -> Observation:
        observation, _ = await self._observe_raising(role, query)
        return observation

    async def _observe_raising(
        self, role: Role, query: RangeQuery
    ) -> tuple[Observation, StorageError | None]:
        storage = self._storages[role]
        started = time.perf_counter()
        try:
            groups = await self._engine.query_range(storage, query)
        except StorageError as error:
            elapsed = time.perf_counter() - started
            return Observation(role.value, storage.name, elapsed, error=repr(error)), error
        return Observation(
            role.value, storage.name, time.perf_counter() - started, value=tuple(groups)
        ), None

    async def _await_shadow(
        self, shadow: asyncio.Task[Observation], primary: Observation
    ) -> Observation:
        # The shadow started with the primary: it gets its own timeout, counted
        # from then, never more.
        remaining = max(0.0, self.config.shadow_timeout_s - primary.duration_s)
        done, _ = await asyncio.wait({shadow}, timeout=remaining)
        if done:
            return shadow.result()
        shadow.cancel()
        role = Role.NEW if primary.role == Role.OLD.value else Role.OLD
        return Observation(
            role.value,
            self.backend_name(role),
            self.config.shadow_timeout_s,
            error=f"timed out after {self.config.shadow_timeout_s}s",
        )

    def _compare(
        self, query: RangeQuery, stage: Stage, primary: Observation, candidate: Observation
    ) -> Comparison:
        now = self._clock.now_ms()
        diff: tuple[str, ...] = ()
        if candidate.error is None and candidate.value is not None and primary.value is not None:
            diff = compare_results(
                primary.value,
                candidate.value,
                [s.name for s in query.stats],
                relative_tolerance=self.config.relative_tolerance,
                newer_than_ms=self._newer_than_ms(now),
                step_ms=query.step_ms,
            )
        return _comparison(query, stage, now, primary, candidate, diff)

    def _newer_than_ms(self, now_ms: int) -> int:
        """Buckets from here on are not compared (both sides may lag)."""
        return now_ms - now_ms % MINUTE_MS - self.config.ignore_newest_minutes * MINUTE_MS

    def _publish(self, comparison: Comparison) -> None:
        """The one seam through which a comparison reaches telemetry: the RPC
        span, counters, and the window behind GetMigrationStatus. Diffs hold
        customer values, so they go to the admin-only status, not to spans or
        logs."""
        span = trace.get_current_span()
        span.set_attributes(
            {
                "metaas.compare.consistent": comparison.consistent,
                "metaas.compare.latency_delta_ms": comparison.latency_delta_ms,
                "metaas.compare.primary_backend": comparison.primary.backend,
                "metaas.compare.shadow_backend": comparison.candidate.backend,
                "metaas.compare.shadow_error": comparison.candidate.error is not None,
            }
        )
        attributes: dict[str, str | bool] = {
            "stage": comparison.stage,
            "consistent": comparison.consistent,
        }
        self._comparisons.add(1, attributes)
        if not comparison.consistent:
            self._mismatches.add(1, {"stage": comparison.stage})
            log.warning(
                "shadow mismatch: app %s metric %s (%d differences)",
                comparison.app,
                comparison.metric,
                len(comparison.diff),
            )
        self.window.record_comparison(comparison)

    def _check_guard(self, app: str, stage: Stage) -> None:
        if stage not in (Stage.LIVE, Stage.RAMPDOWN) or app in self.fallbacks:
            return
        config = self.config
        reads, error_rate, compared, mismatch_rate = self.window.rates(app, Role.NEW.value)
        reason = None
        if reads >= config.guard_min_samples and error_rate > config.guard_error_rate:
            reason = f"new backend error rate {error_rate:.1%} over {reads} reads"
        elif compared >= config.guard_min_samples and mismatch_rate > config.guard_mismatch_rate:
            reason = f"mismatch rate {mismatch_rate:.1%} over {compared} comparisons"
        if reason is None:
            return
        self.fallbacks[app] = Fallback(app, stage, reason, self._clock.now_ms())
        self._fallback_counter.add(1, {"stage": stage.value})
        log.warning(
            "reads for app %s fall back to the old backend until its stage changes: %s", app, reason
        )


def _comparison(
    query: RangeQuery,
    stage: Stage,
    now_ms: int,
    primary: Observation,
    candidate: Observation,
    diff: tuple[str, ...],
) -> Comparison:
    """The comparison of two reads; a failed shadow read is a difference."""
    if candidate.error is not None:
        diff = (f"shadow failed: {candidate.error}",)
    return Comparison(
        query.app, query.metric, stage.value, now_ms, primary, candidate, not diff, diff
    )


def _cancel(task: asyncio.Task[Observation] | None) -> None:
    if task is not None:
        task.cancel()
