"""One tenant opens 512 WriteStreams and leaves them idle: it gets its share
of the in-flight limit and no more, another tenant's queries and writes go
through meanwhile, and the idle streams are ended by the idle timeout."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import grpc

from metaas.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc
from tests.e2e.test_security import TOKEN_A, TOKEN_C, access_file
from tests.support import ServerProcess

STREAMS = 512
CHANNELS = 8
IDLE_TIMEOUT_S = 10.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _write(app: str) -> ingest_pb2.WriteRequest:
    return ingest_pb2.WriteRequest(
        series=[ingest_pb2.SeriesSamples(app=app, metric="m", times_ms=[_now_ms()], values=[1.0])]
    )


async def _scenario(target: str) -> dict[str, object]:
    # Separate connections: channels to one target otherwise share one, and
    # gRPC's cap on concurrent streams per connection would queue the rest.
    hostile = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS)
    ]
    auth_a = [("authorization", f"Bearer {TOKEN_A}")]
    auth_c = [("authorization", f"Bearer {TOKEN_C}")]
    calls = []
    try:
        for i in range(STREAMS):
            stub = ingest_pb2_grpc.MetricsIngestStub(hostile[i % CHANNELS])
            calls.append(stub.WriteStream(metadata=auth_a))

        async def first_message(call: grpc.aio.StreamUnaryCall[Any, Any]) -> None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await call.write(_write("app-a"))

        opening = time.perf_counter()
        await asyncio.gather(*(first_message(c) for c in calls))
        opened_s = time.perf_counter() - opening
        await asyncio.sleep(1.0)
        ended = [await c.code() for c in calls if c.done()]
        refused = ended.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
        held = sum(1 for c in calls if not c.done())
        async with grpc.aio.insecure_channel(target) as channel:
            started = time.perf_counter()
            await ingest_pb2_grpc.MetricsIngestStub(channel).Write(
                _write("app-c"), metadata=auth_c, timeout=5
            )
            await query_pb2_grpc.MetricsQueryStub(channel).QueryRange(
                query_pb2.QueryRangeRequest(
                    app="app-c", metric="m", start_ms=_now_ms() - 600_000, end_ms=_now_ms()
                ),
                metadata=auth_c,
                timeout=5,
            )
            other_ms = (time.perf_counter() - started) * 1000
        idle_started = time.monotonic()
        codes = await asyncio.gather(*(c.code() for c in calls if not c.done()))
        ended_after_s = time.monotonic() - idle_started
        return {
            "streams opened": STREAMS,
            "opened in (s)": round(opened_s, 1),
            "held": held,
            "refused": refused,
            "other tenant write+query (ms)": round(other_ms, 1),
            "idle streams ended after (s)": round(ended_after_s, 1),
            "idle end codes": sorted({code.name for code in codes}),
        }
    finally:
        for call in calls:
            call.cancel()
        for channel in hostile:
            await channel.close()


def test_idle_streams_of_one_tenant_do_not_lock_out_another(
    tmp_path: Path, figures: dict[str, object]
) -> None:
    tokens = access_file(
        tmp_path / "access.json", (TOKEN_A, ["app-a"], False), (TOKEN_C, ["app-c"], False)
    )
    server = ServerProcess(
        tmp_path / "server",
        extra=(
            "--auth-tokens",
            str(tokens),
            "--stream-idle-timeout-s",
            str(IDLE_TIMEOUT_S),
        ),
    ).start()
    try:
        found = asyncio.run(_scenario(server.target))
    finally:
        server.stop()
    figures.update(found)
    # The default share: 128 of the 512 in-flight slots per caller.
    assert found["held"] == 128
    assert found["refused"] == STREAMS - 128
    assert found["idle end codes"] == ["DEADLINE_EXCEEDED"]
    assert float(str(found["idle streams ended after (s)"])) < IDLE_TIMEOUT_S + 3
