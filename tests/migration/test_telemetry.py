"""One shadowed query's trace: the RPC span with both backends' child spans
and the comparison attributes, in memory and over OTLP on the wire."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from metaas.client import AsyncClient, Client, Series
from metaas.server.app import serve
from metaas.server.config import IngestConfig, MigrationConfig, ServerConfig, Settings
from metaas.server.telemetry import Telemetry
from tests.migration.support import write_flags
from tests.support import ServerProcess, eventually, free_port

MINUTE = 60_000
QUERY = "metaas.v1.MetricsQuery/QueryRange"


async def test_shadowed_query_trace_in_memory(tmp_path: Path) -> None:
    flags = tmp_path / "flags.json"
    write_flags(flags, {"traced": "shadow"})
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    port = free_port()
    settings = Settings(
        storage_url=f"sqlite:///{tmp_path / 'old.db'}",
        server=ServerConfig(listen=f"127.0.0.1:{port}"),
        ingest=IngestConfig(wal_dir=tmp_path / "wal", flush_interval_s=0.1),
        migration=MigrationConfig(target_url=f"sqlite:///{tmp_path / 'new.db'}", flags_file=flags),
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(
        serve(
            settings,
            Telemetry(provider, MeterProvider()),
            stop=stop,
            on_ready=lambda _: ready.set(),
        )
    )
    await asyncio.wait_for(ready.wait(), 10)
    now = time.time_ns() // 1_000_000
    async with AsyncClient(f"127.0.0.1:{port}") as client:
        await client.write([Series("traced", "m", [now - 3 * MINUTE], [4.0])])
        await asyncio.sleep(0.5)
        spans.clear()
        await client.query_range("traced", "m", now - 10 * MINUTE, now)
    stop.set()
    await server

    finished = spans.get_finished_spans()
    (rpc,) = [s for s in finished if s.name == QUERY]
    attributes = dict(rpc.attributes or {})
    assert attributes["metaas.migration.stage"] == "shadow"
    assert attributes["metaas.compare.consistent"] is True
    assert "metaas.compare.latency_delta_ms" in attributes
    children = [s for s in finished if s.parent and s.parent.span_id == rpc.context.span_id]
    roles = sorted(dict(c.attributes or {})["metaas.backend.role"] for c in children)
    assert roles == ["new", "old"]
    assert all(dict(c.attributes or {})["db.system"] == "sqlite" for c in children)
    assert all(c.attributes and c.attributes["db.operation"] == "read_partials" for c in children)


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def otlp() -> Iterator[tuple[Receiver, int]]:
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, port
    server.stop(None)


def test_shadowed_query_trace_over_otlp(tmp_path: Path, otlp: tuple[Receiver, int]) -> None:
    receiver, port = otlp
    flags = tmp_path / "flags.json"
    write_flags(flags, {"traced": "live"})
    server = ServerProcess(
        tmp_path / "server",
        storage=f"sqlite:///{tmp_path / 'old.db'}",
        extra=("--migration-target", f"sqlite:///{tmp_path / 'new.db'}", "--flags", str(flags)),
        env={
            "OTEL_SDK_DISABLED": "false",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
    ).start()
    now = time.time_ns() // 1_000_000
    try:
        with Client(server.target) as client:
            client.write([Series("traced", "m", [now - 3 * MINUTE], [4.0])])
            client.query_range("traced", "m", now - 10 * MINUTE, now)
    finally:
        server.terminate()

    def exported() -> list[object]:
        spans = [
            s
            for r in receiver.requests
            for rs in r.resource_spans
            for ss in rs.scope_spans
            for s in ss.spans
        ]
        assert any(s.name == QUERY for s in spans)
        return spans

    spans = eventually(exported, timeout=10)
    (rpc,) = [s for s in spans if s.name == QUERY]  # type: ignore[attr-defined]
    rpc_attributes = {a.key: a.value for a in rpc.attributes}
    assert rpc_attributes["metaas.migration.stage"].string_value == "live"
    assert rpc_attributes["metaas.compare.consistent"].bool_value is True
    children = [s for s in spans if s.parent_span_id == rpc.span_id]  # type: ignore[attr-defined]
    roles = sorted(
        {a.key: a.value for a in c.attributes}["metaas.backend.role"].string_value for c in children
    )
    assert roles == ["new", "old"]
