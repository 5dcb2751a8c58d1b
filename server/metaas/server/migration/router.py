"""One pass per query through the migration: route the app by its stage,
read from the role that serves it (falling back to the old backend when the
guard says so), start the sampled shadow check beside it, and publish the
comparison once it is in. The parts, as in github/scientist's experiment:

- ``routing``: stage to read, write and shadow roles;
- ``guard``: the window and the fallbacks it decides;
- ``compare``: frozen observations and comparisons, and a pure compare;
- ``shadow``: one interface, read on the loop or in worker processes;
- ``publisher``: comparisons to the span it is given, counters and logs.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from metaas.server.migration.compare import Comparison, Observation
from metaas.server.migration.guard import Guard
from metaas.server.migration.publisher import Publisher, Span
from metaas.server.migration.routing import Route, Routing
from metaas.server.migration.shadow import Shadow, ShadowRead, observe
from metaas.server.migration.stages import Role, Stage
from metaas.server.model import SeriesKey
from metaas.server.query import QueryEngine, RangeQuery, ResultGroup


@dataclass(frozen=True, slots=True)
class Routed:
    groups: list[ResultGroup]
    served_by: str
    stage: Stage
    # The shadow comparison, finishing after the answer (None: no shadow
    # read; a task yielding None: the check was skipped).
    comparison: asyncio.Task[Comparison | None] | None


class MigrationRouter:
    def __init__(
        self,
        routing: Routing,
        guard: Guard,
        *,
        engine: QueryEngine,
        shadow: Shadow,
        publisher: Publisher,
        sample: Callable[[], float] = random.random,
    ) -> None:
        self._routing = routing
        self._guard = guard
        self._engine = engine
        self._shadow = shadow
        self._publisher = publisher
        self._sample = sample
        self._comparing: set[asyncio.Task[Comparison | None]] = set()

    def authoritative(self, app: str) -> Role:
        """The role that serves the app's reads now."""
        return self._guard.read_role(self._routing.route(app))

    async def list_series(
        self, app: str, start_ms: int, end_ms: int, metric: str | None
    ) -> tuple[Sequence[SeriesKey], str]:
        storage = self._routing.storage(self.authoritative(app))
        return await storage.list_series(app, start_ms, end_ms, metric), storage.name

    async def query_range(self, query: RangeQuery, span: Span) -> Routed:
        """The answer to ``query``, and its shadow comparison, published on
        ``span`` after the answer: the caller keeps ``span`` open until
        ``Routed.comparison`` is done."""
        route = self._routing.route(query.app)
        role = self._guard.read_role(route)
        shadow = self._start_shadow(route, role, query)
        try:
            primary, error = await observe(self._engine, self._routing, role, query)
            if error is not None and role is Role.NEW and route.plan.fallback_allowed:
                # The old backend still has every write: answer from it instead.
                self._guard.record_read(route, role, failed=True)
                self._stop(shadow, route, span, "served read failed")
                shadow = None
                role = Role.OLD
                primary, error = await observe(self._engine, self._routing, role, query)
        except BaseException as stopped:
            # Cancelled (the caller's deadline passed) or refused (too large):
            # the shadow read of the same query stops too.
            cancelled = isinstance(stopped, asyncio.CancelledError)
            self._stop(
                shadow, route, span, f"served read {'cancelled' if cancelled else 'refused'}"
            )
            raise
        self._guard.record_read(route, role, failed=error is not None)
        if error is not None:
            self._stop(shadow, route, span, "served read failed")
            raise error
        comparison = None
        if shadow is not None:
            # Answer now; the comparison finishes beside the next requests.
            comparison = asyncio.create_task(self._check(route, shadow, primary, span))
            self._comparing.add(comparison)
            comparison.add_done_callback(self._comparing.discard)
        assert primary.value is not None
        return Routed(list(primary.value), primary.backend, route.stage, comparison)

    async def drain(self) -> None:
        """Wait for comparisons still running (each bounded by the shadow
        timeout), so their results are published before shutdown."""
        while self._comparing:
            await asyncio.gather(*self._comparing, return_exceptions=True)

    def _start_shadow(self, route: Route, role: Role, query: RangeQuery) -> ShadowRead | None:
        """The sampled shadow check, when the app's plan has one and its
        reads are served as planned (not fallen back)."""
        shadow_role = route.plan.shadow
        if shadow_role is None or role is not route.plan.reads:
            return None
        if self._sample() >= self._routing.check_ratio(route.app):
            return None
        return self._shadow.start(route, shadow_role, query)

    def _stop(self, shadow: ShadowRead | None, route: Route, span: Span, reason: str) -> None:
        if shadow is not None:
            shadow.cancel()
            self._publisher.skipped(route.stage.value, reason, span)

    async def _check(
        self, route: Route, shadow: ShadowRead, primary: Observation, span: Span
    ) -> Comparison | None:
        comparison = await shadow.verdict(primary)
        if comparison is None:
            self._publisher.skipped(route.stage.value, "shadow workers saturated", span)
            return None
        self._publisher.publish(comparison, span)
        self._guard.record_comparison(route, comparison)
        return comparison
