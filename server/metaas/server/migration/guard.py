"""The guard rail: in live and rampdown, an app's reads fall back to the old
backend when, over the window, the new one errs or disagrees too often. The
guard owns the window it judges by and the fallbacks it has decided."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from opentelemetry import metrics

from metaas.server.clock import Clock
from metaas.server.config import MigrationConfig
from metaas.server.migration.compare import Comparison
from metaas.server.migration.routing import Route
from metaas.server.migration.stages import Role, Stage
from metaas.server.migration.window import MigrationWindow

log = logging.getLogger(__name__)
_GUARDED = (Stage.LIVE, Stage.RAMPDOWN)


@dataclass(frozen=True, slots=True)
class Fallback:
    app: str
    stage: Stage  # cleared when an operator moves the app to another stage
    reason: str
    since_ms: int


class Guard:
    def __init__(
        self,
        config: MigrationConfig,
        window: MigrationWindow,
        *,
        meter: metrics.Meter,
        clock: Clock,
    ) -> None:
        self._config = config
        self.window = window
        self._clock = clock
        self._fallbacks: dict[str, Fallback] = {}
        self._counter = meter.create_counter(
            "metaas.migration.fallbacks", unit="{event}", description="Guard-rail fallbacks"
        )

    @property
    def fallbacks(self) -> Mapping[str, Fallback]:
        """The apps whose reads fall back, read-only."""
        return MappingProxyType(self._fallbacks)

    def read_role(self, route: Route) -> Role:
        """The role that serves the app's reads: the plan's, unless the app
        has fallen back. A fallback decided in another stage is cleared (an
        operator moved the app on) with the window behind it."""
        fallback = self._fallbacks.get(route.app)
        if fallback is not None and fallback.stage is not route.stage:
            del self._fallbacks[route.app]
            self.window.forget_app(route.app)
            log.info("fallback for app %s cleared: stage is now %s", route.app, route.stage)
            fallback = None
        plan = route.plan
        return Role.OLD if fallback is not None and plan.fallback_allowed else plan.reads

    def record_read(self, route: Route, role: Role, *, failed: bool) -> None:
        """A read of the app served (or attempted) by ``role``."""
        self.window.record_read(route.app, role.value, failed)
        self._check(route)

    def record_comparison(self, route: Route, comparison: Comparison) -> None:
        self.window.record_comparison(comparison)
        self._check(route)

    def _check(self, route: Route) -> None:
        app = route.app
        if route.stage not in _GUARDED or app in self._fallbacks:
            return
        config = self._config
        reads, error_rate, compared, mismatch_rate = self.window.rates(app, Role.NEW.value)
        reason = None
        if reads >= config.guard_min_samples and error_rate > config.guard_error_rate:
            reason = f"new backend error rate {error_rate:.1%} over {reads} reads"
        elif compared >= config.guard_min_samples and mismatch_rate > config.guard_mismatch_rate:
            reason = f"mismatch rate {mismatch_rate:.1%} over {compared} comparisons"
        if reason is None:
            return
        self._fallbacks[app] = Fallback(app, route.stage, reason, self._clock.now_ms())
        self._counter.add(1, {"stage": route.stage.value})
        log.warning(
            "reads for app %s fall back to the old backend until its stage changes: %s", app, reason
        )
