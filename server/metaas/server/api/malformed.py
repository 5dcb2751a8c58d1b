"""Bytes that do not parse as the request message get INVALID_ARGUMENT naming
the message type, instead of grpcio's UNKNOWN "Unexpected DecodeError"."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError

from metaas.server.api.errors import RequestError, abort


class _Malformed:
    __slots__ = ("error",)

    def __init__(self, error: DecodeError) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as error:
            return _Malformed(error)

    return parse


def _refusal(method: str) -> RequestError:
    return RequestError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the request body is not a valid message for {method}",
        [("(request)", "does not parse as the request message")],
    )


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Applies to the ``metaas.v1`` services' unary and client-streaming RPCs."""

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
        deserializer = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            unary: Any = handler.unary_unary

            async def unary_behavior(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> Any:
                if isinstance(request, _Malformed):
                    await abort(context, _refusal(method))
                return await unary(request, context)

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
                        if isinstance(request, _Malformed):
                            await abort(context, _refusal(method))
                        yield request

                return await streamed(checked(), context)

            return grpc.stream_unary_rpc_method_handler(
                cast(Any, stream_behavior), deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            streaming: Any = handler.unary_stream

            async def unary_stream_behavior(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                if isinstance(request, _Malformed):
                    await abort(context, _refusal(method))
                async for response in streaming(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                cast(Any, unary_stream_behavior), deserializer, handler.response_serializer
            )
        return cast("grpc.RpcMethodHandler[Any, Any]", handler)
