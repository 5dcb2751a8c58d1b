"""What happens to a request's bytes before its handler runs, for every
``metaas.v1`` RPC (unary and client-streaming):

- **Admission by bytes.** Each message's bytes are reserved against the
  server's budget (``--max-inflight-bytes``) *before* they are parsed; a
  message that does not fit is refused with RESOURCE_EXHAUSTED unparsed, so
  many concurrent large writes cannot grow memory past the budget. The
  reservation is released when the RPC ends (for a stream: when the next
  message is read), or, at the latest, when the message is collected.
- **Malformed bytes** get INVALID_ARGUMENT naming the message type, instead
  of grpcio's UNKNOWN "Unexpected DecodeError".

Messages above the transport cap (``grpc.max_receive_message_length``) never
get here: gRPC refuses them with RESOURCE_EXHAUSTED before reading them whole.

And how a parsed ``WriteRequest`` becomes ingest's own batch
(:func:`batches_from_request`, :func:`write_batch`): the public proto ends
here, so that changing it never changes ingest or its write-ahead log.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, cast

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from metaas.server.api.admission import RETRY_AFTER_S, Admission
from metaas.server.api.errors import RequestError, abort
from metaas.server.ingest import SeriesBatch, WriteBatch, fingerprint
from metaas.server.model import SeriesKey
from metaas.v1 import ingest_pb2


class _Malformed:
    __slots__ = ()


class _Refused:
    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class _Held:
    """A parsed message and its reservation of request bytes."""

    __slots__ = ("__weakref__", "message", "release")

    def __init__(self, message: Any, size: int, admission: Admission) -> None:
        self.message = message
        # Runs once: explicitly when the RPC is done with the message, or when
        # the message is collected if a cancelled call never reached that.
        self.release = weakref.finalize(self, admission.release_bytes, size)


def _gated(deserialize: Callable[[bytes], Any], admission: Admission) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        size = len(data)
        if not admission.reserve_bytes(size):
            return _Refused(size)
        try:
            return _Held(deserialize(data), size, admission)
        except DecodeError:
            admission.release_bytes(size)
            return _Malformed()

    return parse


def _refusal(method: str, request: _Malformed | _Refused, admission: Admission) -> RequestError:
    if isinstance(request, _Refused):
        return RequestError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{admission.bytes_held} request bytes are being processed (limit "
            f"{admission.max_bytes}, --max-inflight-bytes); this {request.size}-byte "
            "message was not read: retry shortly",
            retry_after_s=RETRY_AFTER_S,
        )
    return RequestError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the request body is not a valid message for {method}",
        [("(request)", "does not parse as the request message")],
    )


class IntakeInterceptor(grpc.aio.ServerInterceptor):
    """See the module docstring."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        # grpcio's stubs type handlers for the blocking server; these are
        # coroutines, so the behaviours are handled as Any.
        handler: Any = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if (
            handler is None
            or not method.startswith("/metaas.v1.")
            or not handler.request_deserializer
        ):
            return cast("grpc.RpcMethodHandler[Any, Any] | None", handler)
        admission = self._admission
        deserializer = _gated(handler.request_deserializer, admission)
        if handler.unary_unary is not None:
            unary: Any = handler.unary_unary

            async def unary_behavior(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> Any:
                if not isinstance(request, _Held):
                    await abort(context, _refusal(method, request, admission))
                try:
                    return await unary(request.message, context)
                finally:
                    request.release()

            return grpc.unary_unary_rpc_method_handler(
                cast(Any, unary_behavior), deserializer, handler.response_serializer
            )
        if handler.stream_unary is not None:
            streamed: Any = handler.stream_unary

            async def stream_behavior(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
            ) -> Any:
                async def checked() -> AsyncIterator[Any]:
                    async for request in requests:
                        if not isinstance(request, _Held):
                            await abort(context, _refusal(method, request, admission))
                        try:
                            yield request.message
                        finally:
                            request.release()

                return await streamed(checked(), context)

            return grpc.stream_unary_rpc_method_handler(
                cast(Any, stream_behavior), deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            streaming: Any = handler.unary_stream

            async def unary_stream_behavior(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                if not isinstance(request, _Held):
                    await abort(context, _refusal(method, request, admission))
                try:
                    async for response in streaming(request.message, context):
                        yield response
                finally:
                    request.release()

            return grpc.unary_stream_rpc_method_handler(
                cast(Any, unary_stream_behavior), deserializer, handler.response_serializer
            )
        return cast("grpc.RpcMethodHandler[Any, Any]", handler)


def batches_from_request(request: ingest_pb2.WriteRequest) -> list[SeriesBatch]:
    """Each series of ``request`` with its samples (not validated)."""
    return [
        SeriesBatch(
            SeriesKey.of(s.app, s.metric, dict(s.labels)),
            np.asarray(s.times_ms, dtype=np.int64),
            np.asarray(s.values, dtype=np.float64),
        )
        for s in request.series
    ]


def write_batch(
    request: ingest_pb2.WriteRequest, series: Sequence[SeriesBatch], samples: int
) -> WriteBatch:
    """Ingest's batch of a validated request: its ``series`` and ``samples``
    (from validation), and its idempotency key with the fingerprint of its
    body, taken as every release since scoped keys has, so that a retry
    across an upgrade still matches its first attempt."""
    key = request.idempotency_key
    if not key:
        return WriteBatch(series, samples)
    body = request.SerializeToString(deterministic=True)
    return WriteBatch(series, samples, key, fingerprint(body))
