"""The client against a scripted in-process gRPC server: retries of
UNAVAILABLE through the service config, deadlines, and error details."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from metaas.client import AsyncClient, Client, MetaasError, Series
from metaas.server.api.errors import RequestError, abort
from metaas.v1 import ingest_pb2, ingest_pb2_grpc


class FlakyIngest(ingest_pb2_grpc.MetricsIngestServicer):
    def __init__(self) -> None:
        self.keys: list[str] = []
        self.fail_first = 2
        self.delay_s = 0.0

    async def Write(
        self,
        request: ingest_pb2.WriteRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> ingest_pb2.WriteResponse:
        self.keys.append(request.idempotency_key)
        await asyncio.sleep(self.delay_s)
        if len(self.keys) <= self.fail_first:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        if not request.series[0].app:
            await abort(
                context,
                RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT, "bad", [("series[0].app", "is required")]
                ),
            )
        return ingest_pb2.WriteResponse(accepted_samples=len(request.series[0].values))


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[FlakyIngest, str]]:
    server = grpc.aio.server()
    servicer = FlakyIngest()
    ingest_pb2_grpc.add_MetricsIngestServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(None)


SAMPLES = [Series("shop", "m", [1, 2], [1.0, 2.0])]


async def test_unavailable_is_retried_with_the_same_idempotency_key(
    flaky: tuple[FlakyIngest, str],
) -> None:
    servicer, target = flaky
    async with AsyncClient(target) as client:
        assert await client.write(SAMPLES) == 2
    assert len(servicer.keys) == 3
    assert len(set(servicer.keys)) == 1
    assert servicer.keys[0]


async def test_deadline_exceeded_is_raised(flaky: tuple[FlakyIngest, str]) -> None:
    servicer, target = flaky
    servicer.fail_first, servicer.delay_s = 0, 2.0
    async with AsyncClient(target, timeout=0.2) as client:
        with pytest.raises(MetaasError) as caught:
            await client.write(SAMPLES)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_field_violations_reach_the_sync_client(flaky: tuple[FlakyIngest, str]) -> None:
    servicer, target = flaky
    servicer.fail_first = 0

    def call() -> MetaasError:
        with Client(target) as client, pytest.raises(MetaasError) as caught:
            client.write([Series("", "m", [1], [1.0])])
        return caught.value

    error = await asyncio.to_thread(call)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.description) for v in error.violations] == [
        ("series[0].app", "is required")
    ]
