"""Wires the components together and runs the server until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import urlsplit

from metaas.server.api import (
    Admission,
    Api,
    Authenticator,
    MetricsIngestServicer,
    MetricsQueryServicer,
    MigrationAdminServicer,
    Rpcs,
)
from metaas.server.clock import Clock, SystemClock
from metaas.server.config import ConfigError, MigrationConfig, Settings, setting_of
from metaas.server.ingest import IngestPipeline
from metaas.server.kafka import KafkaIngest
from metaas.server.migration import (
    Guard,
    LoopShadow,
    MigrationRouter,
    MigrationWindow,
    Publisher,
    Role,
    Routing,
    Shadow,
    ShadowPool,
    WorkerShadow,
    open_flags,
    setup_of,
)
from metaas.server.query import QueryEngine
from metaas.server.storage import Storage, StorageContext, StorageError, open_storage
from metaas.server.telemetry import Telemetry
from metaas.v1 import migration_pb2

log = logging.getLogger("metaas.server")
_STORAGE = setting_of(Settings, "storage_url")
_TARGET = setting_of(MigrationConfig, "target_url")


@contextlib.asynccontextmanager
async def _backends(
    settings: Settings, context: StorageContext, window: MigrationWindow
) -> AsyncIterator[dict[Role, Storage]]:
    """The old backend, and the new one when a migration is configured."""
    urls = {Role.OLD: settings.storage_url}
    if settings.migration.target_url is not None:
        urls[Role.NEW] = settings.migration.target_url
    opened: dict[Role, Storage] = {}
    try:
        for role, url in urls.items():
            with _named_by(role):
                opened[role] = await open_storage(
                    url, context, role=role.value, on_call=window.record_call
                )
        yield opened
    finally:
        for storage in opened.values():
            await storage.close()


@contextlib.contextmanager
def _named_by(role: Role) -> Iterator[None]:
    """A backend that cannot be opened names the setting of its URL: that of
    --storage, the only one schema apply and the rebuilds take; the new
    backend's errors name --migration-target instead."""
    try:
        yield
    except (ConfigError, StorageError) as error:
        if role is Role.NEW:
            old, new = _STORAGE.label, _TARGET.label
            error.args = tuple(a.replace(old, new) if isinstance(a, str) else a for a in error.args)
        raise


def _where(url: str) -> str:
    """Where a storage URL points: a file, hosts and keyspace, or a table;
    never credentials. Only the backend of ``url`` is imported (it is open)."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from metaas.server.storage.sqlite import SqliteConfig

        return SqliteConfig.from_url(url).describe()
    if scheme == "cassandra":
        from metaas.server.storage.cassandra import CassandraConfig

        return CassandraConfig.from_url(url).describe()
    from metaas.server.storage.dynamodb import DynamoConfig

    return DynamoConfig.from_url(url).describe()


@contextlib.asynccontextmanager
async def _shadow_pool(
    settings: Settings,
) -> AsyncIterator[ShadowPool | None]:
    """Worker processes for shadow reads, when configured for a migration."""
    migration = settings.migration
    if migration.target_url is None or migration.shadow_workers == 0:
        yield None
        return
    urls = {Role.OLD: settings.storage_url, Role.NEW: migration.target_url}
    setup = setup_of(
        urls,
        retention_ms=settings.retention.retention_ms,
        codec=settings.codec,
        rollups_from_ms=settings.query.rollups_from_ms,
        views=settings.views,
    )
    pool = ShadowPool(setup, workers=migration.shadow_workers)
    try:
        await pool.start()
        yield pool
    finally:
        await pool.close()


# How long a thread may hold the interpreter lock while another waits for it
# (CPython's default is 5 ms). The serving loop hands work to threads (the
# SQLite reader, the log writer, the Cassandra driver's I/O thread, gRPC's
# poller); with 5 ms, a thread whose result is ready waits for the loop to
# let go. 1 ms: +15-35% queries/s at 32 concurrent on the embedded store.
_SWITCH_INTERVAL_S = 0.001
# Allocations between young collections (CPython's default is 700). Requests
# allocate many short-lived objects; collecting less often also makes the
# full collections, whose pauses grow with the heap, rarer.
_GC_THRESHOLDS = (50_000, 20, 100)


def _tune_runtime() -> None:
    """Hand the interpreter lock to waiting threads sooner (see above), and
    keep the cycle collector's pauses out of query latency: everything
    allocated while starting (modules, drivers, connections) is moved out of
    its reach with gc.freeze(), and collections run less often. Without this
    a 7-day query's p99 was 4-5x its median in the benchmark: full
    collections scanning the in-memory aggregates."""
    gc.set_threshold(*_GC_THRESHOLDS)
    gc.freeze()
    sys.setswitchinterval(_SWITCH_INTERVAL_S)


async def serve(
    settings: Settings,
    telemetry: Telemetry,
    *,
    clock: Clock | None = None,
    on_ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT), then drain in-flight
    RPCs, flush every acknowledged sample to storage and close."""
    clock = clock or SystemClock()
    retention_ms = settings.retention.retention_ms
    stop = stop or asyncio.Event()
    context = StorageContext(retention_ms, clock=clock, codec=settings.codec, telemetry=telemetry)
    migration = settings.migration
    window = MigrationWindow(window_s=migration.window_s)
    try:
        async with (
            _backends(settings, context, window) as backends,
            _shadow_pool(settings) as shadow_pool,
        ):
            engine = QueryEngine(
                retention_ms=retention_ms,
                clock=clock,
                rollups_from_ms=settings.query.rollups_from_ms,
                views=settings.views,
            )
            flags = (
                open_flags(migration.flags_file, migration.flags_provider, telemetry)
                if migration.enabled
                else None
            )
            routing = Routing(backends[Role.OLD], backends.get(Role.NEW), flags)
            guard = Guard(migration, window, meter=telemetry.meter, clock=clock)
            shadow: Shadow = (
                LoopShadow(engine, routing, migration, clock)
                if shadow_pool is None
                else WorkerShadow(shadow_pool, routing, migration, clock)
            )
            router = MigrationRouter(
                routing,
                guard,
                engine=engine,
                shadow=shadow,
                publisher=Publisher(telemetry.meter),
            )
            pipeline = IngestPipeline(
                settings.ingest,
                retention_ms=retention_ms,
                storage={role.value: storage for role, storage in backends.items()},
                clock=clock,
                telemetry=telemetry,
                routing=routing.write_targets,
                views=settings.views,
            )
            await pipeline.start()
            _tune_runtime()
            try:
                await _serve_api(
                    settings, telemetry, clock, router, routing, guard, pipeline, stop, on_ready
                )
            finally:
                await router.drain()
                await pipeline.stop()
    finally:
        telemetry.shutdown()
    log.info("stopped")


async def _serve_api(
    settings: Settings,
    telemetry: Telemetry,
    clock: Clock,
    router: MigrationRouter,
    routing: Routing,
    guard: Guard,
    pipeline: IngestPipeline,
    stop: asyncio.Event,
    on_ready: Callable[[int], None] | None,
) -> None:
    tracer = telemetry.tracer
    authenticator = Authenticator(settings.security)
    limits = settings.limits
    admission = Admission(
        limits.max_inflight_requests,
        telemetry.meter,
        per_caller=limits.max_inflight_per_caller,
        max_bytes=limits.max_inflight_bytes,
    )
    rpcs = Rpcs(tracer, authenticator, admission)
    kafka = (
        KafkaIngest(
            settings.kafka,
            pipeline,
            ingest=settings.ingest,
            limits=limits,
            retention_ms=settings.retention.retention_ms,
            clock=clock,
            telemetry=telemetry,
            views=settings.views,
            on_broker=lambda serving: api.set_serving(serving),
        )
        if settings.kafka.enabled
        else None
    )
    if settings.security.insecure and not settings.security.authenticates:
        log.warning(
            "serving on %s WITHOUT authentication (--insecure): any client that "
            "reaches it may read and write every app",
            settings.server.listen,
        )
    api = Api(
        settings.server,
        settings.security,
        MetricsIngestServicer(
            pipeline,
            limits=settings.limits,
            retention_ms=settings.retention.retention_ms,
            clock=clock,
            rpcs=rpcs,
        ),
        MetricsQueryServicer(router, limits=settings.limits, rpcs=rpcs),
        MigrationAdminServicer(
            routing,
            guard,
            write_lag_s=pipeline.write_lag_s,
            ingest_problems=lambda: pipeline.problems() + (kafka.problems() if kafka else []),
            kafka_partitions=lambda: _kafka_partitions(kafka),
            rpcs=rpcs,
        ),
        admission,
    )
    await api.start()
    if kafka is not None:
        await kafka.start()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    target = settings.migration.target_url
    log.info(
        "metaas serving on %s (port %d), storage %s%s, writer %s",
        settings.server.listen,
        api.port,
        _where(settings.storage_url),
        f", migrating to {_where(target)}" if target is not None else "",
        pipeline.generation,
    )
    if on_ready is not None:
        on_ready(api.port)
    try:
        await stop.wait()
        log.info("shutting down: draining RPCs, then flushing")
        await api.stop(settings.server.shutdown_grace_s)
    finally:
        if kafka is not None:
            await kafka.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)


def _kafka_partitions(kafka: KafkaIngest | None) -> list[migration_pb2.KafkaPartition]:
    if kafka is None:
        return []
    return [
        migration_pb2.KafkaPartition(
            topic=p.topic,
            partition=p.partition,
            committed_offset=p.committed_offset,
            end_offset=p.end_offset,
            lag=p.lag,
            paused=p.paused,
        )
        for p in kafka.partitions()
    ]
