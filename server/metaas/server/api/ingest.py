"""metaas.v1.MetricsIngest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from metaas.server.api.auth import Principal
from metaas.server.api.errors import RequestError
from metaas.server.api.intake import write_batch
from metaas.server.api.rpc import Call, Rpcs, RpcServicer, unary
from metaas.server.api.validation import validate_write
from metaas.server.clock import Clock
from metaas.server.config import LimitsConfig
from metaas.server.ingest import IngestPipeline, KeyReused, KeysFull, Overloaded, WalError
from metaas.v1 import ingest_pb2, ingest_pb2_grpc

SERVICE = "metaas.v1.MetricsIngest"


class MetricsIngestServicer(RpcServicer, ingest_pb2_grpc.MetricsIngestServicer):
    def __init__(
        self,
        pipeline: IngestPipeline,
        *,
        limits: LimitsConfig,
        retention_ms: int,
        clock: Clock,
        rpcs: Rpcs,
    ) -> None:
        super().__init__(rpcs)
        self._pipeline = pipeline
        self._limits = limits
        self._retention_ms = retention_ms
        self._clock = clock

    @unary(SERVICE)
    async def Write(self, request: ingest_pb2.WriteRequest, call: Call) -> ingest_pb2.WriteResponse:
        accepted = await self._write(request, call.principal)
        call.span.set_attribute("metaas.samples", accepted)
        return ingest_pb2.WriteResponse(accepted_samples=accepted)

    @unary(SERVICE)
    async def WriteStream(
        self, request_iterator: AsyncIterator[ingest_pb2.WriteRequest], call: Call
    ) -> ingest_pb2.WriteResponse:
        """Each message is validated and applied on its own, in order; an
        invalid one ends the stream with its error, prefixed by its index.
        The caller is authenticated again at every message, so a revoked
        token ends the stream at its next message; a stream with no message
        for the idle timeout is ended."""
        total = 0
        index = 0
        async for request in self._idle_bounded(request_iterator):
            try:
                total += await self._write(request, call.reauthenticate())
            except RequestError as error:
                raise _in_message(error, index, total) from error
            index += 1
        call.span.set_attribute("metaas.samples", total)
        call.span.set_attribute("metaas.messages", index)
        return ingest_pb2.WriteResponse(accepted_samples=total)

    async def _idle_bounded(
        self,
        requests: AsyncIterator[ingest_pb2.WriteRequest],
    ) -> AsyncIterator[ingest_pb2.WriteRequest]:
        idle_s = self._limits.stream_idle_timeout_s
        iterator = aiter(requests)
        while True:
            try:
                async with asyncio.timeout(idle_s):
                    request = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError as error:
                raise RequestError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no message for {idle_s:g} s (--stream-idle-timeout-s): the stream is "
                    "closed; the messages before stay applied",
                ) from error
            yield request

    async def _write(self, request: ingest_pb2.WriteRequest, principal: Principal) -> int:
        batches, accepted = validate_write(
            request,
            now_ms=self._clock.now_ms(),
            retention_ms=self._retention_ms,
            limits=self._limits,
        )
        for i, series in enumerate(request.series):
            principal.require_app(series.app, f"series[{i}].app")
        batch = write_batch(request, batches, accepted)
        try:
            return await self._pipeline.write(batch, caller=principal.name)
        except KeyReused as error:
            raise RequestError(
                grpc.StatusCode.ALREADY_EXISTS,
                str(error),
                [("idempotency_key", "already used for a different request within the window")],
            ) from error
        except KeysFull as error:
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, str(error), retry_after_s=error.retry_after_s
            ) from error
        except WalError as error:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, str(error)) from error
        except Overloaded as error:
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE, str(error), retry_after_s=error.retry_after_s
            ) from error


def _in_message(error: RequestError, index: int, accepted: int) -> RequestError:
    return RequestError(
        error.code,
        f"message {index}: {error.message} ({accepted} samples of earlier messages were applied)",
        [(f"[{index}].{field}", description) for field, description in error.violations],
    )
