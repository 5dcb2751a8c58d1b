"""Shadow reads: the same query against the other backend, compared with
the served answer. One interface, two implementations that reach the same
comparison through ``compare.judge``:

- ``LoopShadow`` reads on the serving event loop, starting with the served
  read, and compares once both are in;
- ``WorkerShadow`` hands the served answer to a worker process
  (``shadow_pool``), which reads and compares off the serving loop.

A shadow read never delays or fails an answer: it has its own timeout
(``--shadow-timeout-s``), counted from the start of the served read, and its
failure is a difference, not an error of the request.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from metaas.server.clock import Clock
from metaas.server.config import MigrationConfig
from metaas.server.migration.compare import (
    Comparison,
    Observation,
    compare_results,
    judge,
    newer_than_ms,
)
from metaas.server.migration.routing import Route, Routing
from metaas.server.migration.shadow_pool import CheckTask, ShadowPool
from metaas.server.migration.stages import Role
from metaas.server.query import QueryEngine, RangeQuery
from metaas.server.storage.errors import StorageError

# Longest wait for a shadow worker's verdict beyond the shadow timeout.
_WORKER_STALL_S = 10.0


class ShadowRead(Protocol):
    """One sampled check, started beside the served read."""

    def cancel(self) -> None:
        """The served read failed or was cancelled: stop reading."""

    async def verdict(self, primary: Observation) -> Comparison | None:
        """The comparison with the served answer, or None when the check was
        skipped (the workers were saturated: see ``shadow_pool``)."""
        ...


class Shadow(Protocol):
    def start(self, route: Route, role: Role, query: RangeQuery) -> ShadowRead:
        """Begin checking ``query`` against the backend playing ``role``."""
        ...


async def observe(
    engine: QueryEngine, routing: Routing, role: Role, query: RangeQuery
) -> tuple[Observation, StorageError | None]:
    """One backend's answer to ``query`` and how long it took; a storage
    failure is part of the observation (and returned to be raised)."""
    storage = routing.storage(role)
    started = time.perf_counter()
    try:
        groups = await engine.query_range(storage, query)
    except StorageError as error:
        elapsed = time.perf_counter() - started
        return Observation(role.value, storage.name, elapsed, error=repr(error)), error
    elapsed = time.perf_counter() - started
    return Observation(role.value, storage.name, elapsed, value=tuple(groups)), None


class LoopShadow:
    """Shadow reads on the serving event loop."""

    def __init__(
        self, engine: QueryEngine, routing: Routing, config: MigrationConfig, clock: Clock
    ) -> None:
        self._engine = engine
        self._routing = routing
        self._config = config
        self._clock = clock

    def start(self, route: Route, role: Role, query: RangeQuery) -> ShadowRead:
        read = asyncio.create_task(observe(self._engine, self._routing, role, query))
        return _LoopRead(self, route, role, query, read)

    async def check(
        self,
        route: Route,
        role: Role,
        query: RangeQuery,
        read: asyncio.Task[tuple[Observation, StorageError | None]],
        primary: Observation,
    ) -> Comparison:
        config = self._config
        # The shadow started with the primary: its timeout counts from then.
        remaining = max(0.0, config.shadow_timeout_s - primary.duration_s)
        done, _ = await asyncio.wait({read}, timeout=remaining)
        if done:
            candidate, _ = read.result()
        else:
            read.cancel()
            candidate = Observation(
                role.value,
                self._routing.backend_name(role),
                config.shadow_timeout_s,
                error=f"timed out after {config.shadow_timeout_s}s",
            )
        now_ms = self._clock.now_ms()
        diff: tuple[str, ...] = ()
        if candidate.value is not None and primary.value is not None:
            diff = compare_results(
                primary.value,
                candidate.value,
                [s.name for s in query.stats],
                relative_tolerance=config.relative_tolerance,
                newer_than_ms=newer_than_ms(now_ms, config.ignore_newest_minutes),
                step_ms=query.step_ms,
            )
        return judge(query, route.stage.value, now_ms, primary, candidate, diff)


class _LoopRead:
    def __init__(
        self,
        shadow: LoopShadow,
        route: Route,
        role: Role,
        query: RangeQuery,
        read: asyncio.Task[tuple[Observation, StorageError | None]],
    ) -> None:
        self._shadow = shadow
        self._route = route
        self._role = role
        self._query = query
        self._read = read

    def cancel(self) -> None:
        self._read.cancel()

    async def verdict(self, primary: Observation) -> Comparison:
        return await self._shadow.check(self._route, self._role, self._query, self._read, primary)


class WorkerShadow:
    """Shadow reads in worker processes: see ``shadow_pool``."""

    def __init__(
        self, pool: ShadowPool, routing: Routing, config: MigrationConfig, clock: Clock
    ) -> None:
        self._pool = pool
        self._routing = routing
        self._config = config
        self._clock = clock

    def start(self, route: Route, role: Role, query: RangeQuery) -> ShadowRead:
        return _WorkerRead(self, route, role, query)

    async def check(
        self, route: Route, role: Role, query: RangeQuery, primary: Observation
    ) -> Comparison | None:
        assert primary.value is not None
        config = self._config
        now_ms = self._clock.now_ms()
        timeout_s = config.shadow_timeout_s
        task = CheckTask(
            role.value,
            query,
            primary.value,
            tuple(s.name for s in query.stats),
            config.relative_tolerance,
            newer_than_ms(now_ms, config.ignore_newest_minutes),
            timeout_s,
            time.time() + timeout_s,
        )
        # The worker bounds each read by the timeout and skips a task that
        # waited past it; this only guards against a worker that hangs.
        try:
            checked = await asyncio.wait_for(
                self._pool.check(task), _WORKER_STALL_S + 2 * timeout_s
            )
        except TimeoutError:
            checked = None
        if checked is None:
            return None
        candidate = Observation(
            role.value, self._routing.backend_name(role), checked.duration_s, error=checked.error
        )
        return judge(query, route.stage.value, now_ms, primary, candidate, checked.diff)


class _WorkerRead:
    """Nothing runs until the served answer is in: the worker needs it."""

    def __init__(self, shadow: WorkerShadow, route: Route, role: Role, query: RangeQuery) -> None:
        self._shadow = shadow
        self._route = route
        self._role = role
        self._query = query

    def cancel(self) -> None:
        pass  # nothing started

    async def verdict(self, primary: Observation) -> Comparison | None:
        return await self._shadow.check(self._route, self._role, self._query, primary)
