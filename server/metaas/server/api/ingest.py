"""metaas.v1.MetricsIngest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from opentelemetry import trace

from metaas.server.api.admission import Admission
from metaas.server.api.auth import Authenticator, Principal
from metaas.server.api.errors import RequestError, abort
from metaas.server.api.intake import write_batch
from metaas.server.api.tracing import rpc_span
from metaas.server.api.validation import validate_write
from metaas.server.clock import Clock
from metaas.server.config import LimitsConfig
from metaas.server.ingest.idempotency import KeyReused, KeysFull
from metaas.server.ingest.pipeline import IngestPipeline, Overloaded
from metaas.server.ingest.wal import WalError
from metaas.v1 import ingest_pb2, ingest_pb2_grpc

SERVICE = "metaas.v1.MetricsIngest"
_Context = grpc.aio.ServicerContext[ingest_pb2.WriteRequest, ingest_pb2.WriteResponse]


class MetricsIngestServicer(ingest_pb2_grpc.MetricsIngestServicer):
    def __init__(
        self,
        pipeline: IngestPipeline,
        *,
        limits: LimitsConfig,
        retention_ms: int,
        clock: Clock,
        tracer: trace.Tracer,
        authenticator: Authenticator,
        admission: Admission,
    ) -> None:
        self._auth = authenticator
        self._admission = admission
        self._pipeline = pipeline
        self._limits = limits
        self._retention_ms = retention_ms
        self._clock = clock
        self._tracer = tracer

    async def Write(
        self, request: ingest_pb2.WriteRequest, context: _Context
    ) -> ingest_pb2.WriteResponse:
        try:
            with rpc_span(self._tracer, SERVICE, "Write") as span:
                principal = self._auth.authenticate(context)
                span.set_attribute("enduser.id", principal.name)
                with self._admission.admit("Write", principal.name):
                    accepted = await self._write(request, principal)
                span.set_attribute("metaas.samples", accepted)
                return ingest_pb2.WriteResponse(accepted_samples=accepted)
        except RequestError as error:
            await abort(context, error)

    async def WriteStream(
        self, request_iterator: AsyncIterator[ingest_pb2.WriteRequest], context: _Context
    ) -> ingest_pb2.WriteResponse:
        """Each message is validated and applied on its own, in order; an
        invalid one ends the stream with its error, prefixed by its index.
        The caller is authenticated again at every message, so a revoked
        token ends the stream at its next message; a stream with no message
        for the idle timeout is ended."""
        try:
            with rpc_span(self._tracer, SERVICE, "WriteStream") as span:
                principal = self._auth.authenticate(context)
                span.set_attribute("enduser.id", principal.name)
                total = 0
                index = 0
                with self._admission.admit("WriteStream", principal.name):
                    async for request in self._idle_bounded(request_iterator):
                        try:
                            principal = self._auth.authenticate(context)
                            total += await self._write(request, principal)
                        except RequestError as error:
                            raise _in_message(error, index, total) from error
                        index += 1
                span.set_attribute("metaas.samples", total)
                span.set_attribute("metaas.messages", index)
                return ingest_pb2.WriteResponse(accepted_samples=total)
        except RequestError as error:
            await abort(context, error)

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
