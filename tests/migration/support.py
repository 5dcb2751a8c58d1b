"""Flag files, stored-data probes and a router assembled from its parts for
migration tests."""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry import trace

from bench.flags import STAGES, write_flags
from metaas.server.clock import Clock
from metaas.server.config import MigrationConfig
from metaas.server.migration.flags import FlagSource
from metaas.server.migration.guard import Guard
from metaas.server.migration.publisher import Publisher
from metaas.server.migration.router import MigrationRouter, Routed
from metaas.server.migration.routing import Routing
from metaas.server.migration.shadow import LoopShadow
from metaas.server.migration.window import MigrationWindow
from metaas.server.query import QueryEngine, RangeQuery
from metaas.server.storage import Storage
from metaas.server.telemetry import noop

__all__ = ["STAGES", "Rig", "StorageProbe", "write_flags"]


@dataclass(frozen=True, slots=True)
class Rig:
    """A router over two backends with shadow reads on the loop, as the
    server assembles it, and its routing and guard for inspection."""

    router: MigrationRouter
    routing: Routing
    guard: Guard

    @classmethod
    def of(
        cls,
        old: Storage,
        new: Storage,
        flags: FlagSource,
        config: MigrationConfig,
        clock: Clock,
        *,
        retention_ms: int = 30 * 86_400_000,
    ) -> Rig:
        telemetry = noop()
        engine = QueryEngine(retention_ms=retention_ms, clock=clock)
        routing = Routing(old, new, flags)
        window = MigrationWindow(window_s=config.window_s)
        guard = Guard(config, window, meter=telemetry.meter, clock=clock)
        router = MigrationRouter(
            routing,
            guard,
            engine=engine,
            shadow=LoopShadow(engine, routing, config, clock),
            publisher=Publisher(telemetry.meter),
        )
        return cls(router, routing, guard)

    async def query_range(self, query: RangeQuery) -> Routed:
        return await self.router.query_range(query, trace.INVALID_SPAN)

    async def drain(self) -> None:
        await self.router.drain()


class StorageProbe:
    """Reads what a backend stores, through the storage layer, from a test
    that is otherwise synchronous (its own event loop on a thread)."""

    def __init__(self, urls: dict[str, str]) -> None:
        import asyncio
        import threading

        from metaas.server.storage import StorageContext, open_storage

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        context = StorageContext(30 * 86_400_000)

        async def open_all() -> dict[str, object]:
            return {role: await open_storage(url, context) for role, url in urls.items()}

        self._storages = self._run(open_all())

    def _run(self, coroutine):  # type: ignore[no-untyped-def]
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(60)

    def count(self, role: str, app: str, metric: str, label: tuple[str, str]) -> int:
        import time

        now = time.time_ns() // 1_000_000
        storage = self._storages[role]
        partials = self._run(storage.read_partials(app, metric, now - 3_600_000, now + 600_000))  # type: ignore[attr-defined]
        name, value = label
        return sum(
            p.distribution.count for p in partials if dict(p.series.labels).get(name) == value
        )

    def close(self) -> None:
        for storage in self._storages.values():
            self._run(storage.close())  # type: ignore[attr-defined]
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
