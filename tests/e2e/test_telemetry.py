"""Spans and metrics, captured in memory from a server run in process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from metaas.client import AsyncClient, MetaasError, Series
from metaas.server.app import serve
from metaas.server.config import IngestConfig, ServerConfig, Settings
from metaas.server.telemetry import Telemetry
from tests.support import free_port

MINUTE = 60_000


async def test_a_span_per_rpc_and_ingest_metrics(tmp_path: Path) -> None:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    telemetry = Telemetry(tracer_provider, MeterProvider(metric_readers=[reader]))
    port = free_port()
    settings = Settings(
        storage_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        server=ServerConfig(listen=f"127.0.0.1:{port}"),
        ingest=IngestConfig(wal_dir=tmp_path / "wal", flush_interval_s=0.1),
    )
    stop = asyncio.Event()
    ready = asyncio.Event()
    server = asyncio.create_task(
        serve(settings, telemetry, stop=stop, on_ready=lambda _: ready.set())
    )
    await asyncio.wait_for(ready.wait(), 10)
    now = time.time_ns() // 1_000_000
    secret_value = 123456.789
    async with AsyncClient(f"127.0.0.1:{port}") as client:
        assert await client.write([Series("tel", "m", [now, now], [secret_value, 1.0])]) == 2
        with pytest.raises(MetaasError) as caught:
            await client.query_range("tel", "m", now - MINUTE, now, stats=["p42"])
        assert caught.value.violations[0].field == "stats[0]"
        result = await client.query_range("tel", "m", now - MINUTE, now + MINUTE)
        assert result.served_by == "sqlite"
    stop.set()
    await server

    finished = {s.name: s for s in spans.get_finished_spans()}
    write = finished["metaas.v1.MetricsIngest/Write"]
    assert write.attributes is not None
    assert write.attributes["rpc.system"] == "grpc"
    assert write.attributes["rpc.method"] == "Write"
    assert write.attributes["rpc.grpc.status_code"] == 0
    assert write.attributes["metaas.samples"] == 2
    rejected = [
        s
        for s in spans.get_finished_spans()
        if s.name == "metaas.v1.MetricsQuery/QueryRange"
        and s.attributes
        and s.attributes["rpc.grpc.status_code"] == 3
    ]
    assert rejected, "the invalid query's span carries INVALID_ARGUMENT"
    assert "metaas.ingest.flush" in finished
    query_spans = [
        s
        for s in spans.get_finished_spans()
        if s.name == "metaas.v1.MetricsQuery/QueryRange"
        and s.attributes
        and s.attributes["rpc.grpc.status_code"] == 0
    ]
    (query_span,) = query_spans
    children = [
        s
        for s in spans.get_finished_spans()
        if s.parent is not None and s.parent.span_id == query_span.context.span_id
    ]
    assert [(c.name, dict(c.attributes or {})["db.system"]) for c in children] == [
        ("sqlite read_partials", "sqlite")
    ]
    for span in spans.get_finished_spans():
        assert str(secret_value) not in str(dict(span.attributes or {}))

    data = reader.get_metrics_data()
    assert data is not None
    metrics = {
        m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }
    samples = metrics["metaas.ingest.samples"].data.data_points  # type: ignore[union-attr]
    assert sum(p.value for p in samples) == 2  # type: ignore[union-attr]
    assert "metaas.ingest.flush.duration" in metrics
