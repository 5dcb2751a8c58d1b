"""Wires the components together and runs the server until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from metaas.server.api.auth import Authenticator
from metaas.server.api.ingest import MetricsIngestServicer
from metaas.server.api.query import MetricsQueryServicer
from metaas.server.api.server import Api
from metaas.server.clock import Clock, SystemClock
from metaas.server.config import Settings
from metaas.server.ingest.pipeline import IngestPipeline
from metaas.server.query import QueryEngine
from metaas.server.storage import StorageContext, open_storage
from metaas.server.telemetry import Telemetry

log = logging.getLogger("metaas.server")


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
    storage = await open_storage(
        settings.storage_url,
        StorageContext(retention_ms, clock=clock, codec=settings.codec, telemetry=telemetry),
    )
    try:
        pipeline = IngestPipeline(
            settings.ingest,
            retention_ms=retention_ms,
            storage=storage,
            clock=clock,
            telemetry=telemetry,
        )
        await pipeline.start()
        try:
            tracer = telemetry.tracer
            authenticator = Authenticator(settings.security)
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
                    retention_ms=retention_ms,
                    clock=clock,
                    tracer=tracer,
                    authenticator=authenticator,
                ),
                MetricsQueryServicer(
                    QueryEngine(storage, retention_ms=retention_ms, clock=clock),
                    storage,
                    limits=settings.limits,
                    tracer=tracer,
                    authenticator=authenticator,
                ),
            )
            await api.start()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            log.info(
                "metaas serving on %s (port %d), storage %s, writer %s",
                settings.server.listen,
                api.port,
                storage.name,
                pipeline.generation,
            )
            if on_ready is not None:
                on_ready(api.port)
            await stop.wait()
            log.info("shutting down: draining RPCs, then flushing")
            await api.stop(settings.server.shutdown_grace_s)
            for signum in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(signum)
        finally:
            await pipeline.stop()
    finally:
        await storage.close()
        telemetry.shutdown()
    log.info("stopped")
