"""The asyncio client."""

from __future__ import annotations

from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
)
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from metaas.client import _calls as calls
from metaas.client._base import ClientBase, documented_by, method_of, rpc_errors
from metaas.client._calls import ServerStream, Unary
from metaas.client._types import Series

P = ParamSpec("P")
T = TypeVar("T")


def _awaitable(
    make: Callable[P, Unary[T]],
) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._unary(make(*args, **kwargs))

    return method_of(make, method, "AsyncClient", None)


def _async_stream(
    make: Callable[P, ServerStream[T]],
) -> Callable[Concatenate[AsyncClient, P], AsyncIterator[T]]:
    def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[T]:
        return self._server_stream(make(*args, **kwargs))

    return method_of(make, method, "AsyncClient", AsyncIterator)


class AsyncClient(ClientBase[grpc.aio.Channel]):
    """An asyncio metaas client, for services and concurrent work.

    It holds one gRPC channel, which connects at the first call and serves
    every task of its event loop; close it with :meth:`close` or an
    ``async with`` block. Each method is one RPC with a deadline: the
    client's ``timeout`` unless the call gives its own. gRPC itself retries
    UNAVAILABLE (5 attempts, exponential backoff), which is safe for writes
    because each carries an idempotency key. A refused or failed call raises
    :class:`MetaasError`.

    Example::

        async with AsyncClient("127.0.0.1:50051", timeout=5) as client:
            await client.write([Series("shop", "router.latency_ms", [now_ms], [12.5])])
            result = await client.query_range(
                "shop", "router.latency_ms", now_ms - 3_600_000, now_ms,
                step=timedelta(minutes=5), stats=["count", "p99"],
            )

    :class:`Client` has the same methods, blocking.
    """

    write = _awaitable(calls.write)
    query_range = _awaitable(calls.query_range)
    list_series = _awaitable(calls.list_series)
    migration_status = _awaitable(calls.migration_status)
    verify_range = _async_stream(calls.verify_range)

    @documented_by(calls.write_stream)
    async def write_stream(
        self,
        batches: Iterable[Sequence[Series]] | AsyncIterable[Sequence[Series]],
        *,
        timeout: float | None = None,
    ) -> int:
        call = calls.write_stream(timeout=timeout)
        with rpc_errors():
            response = await self._start(call, _messages(batches, call.message))
        return call.convert(response)

    async def close(self) -> None:
        """Close the channel; calls still in progress are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _open_channel(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None,
        options: list[tuple[str, Any]],
    ) -> grpc.aio.Channel:
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, credentials, options=options)

    async def _unary(self, call: Unary[T]) -> T:
        with rpc_errors():
            response = await self._start(call, call.request)
        return call.convert(response)

    async def _server_stream(self, call: ServerStream[T]) -> AsyncIterator[T]:
        responses = self._start(call, call.request)
        try:
            with rpc_errors():
                async for response in responses:
                    yield call.convert(response)
        finally:
            responses.cancel()


def _messages(
    batches: Iterable[Sequence[Series]] | AsyncIterable[Sequence[Series]],
    message: Callable[[Sequence[Series]], Message],
) -> Iterator[Message] | AsyncIterator[Message]:
    if not isinstance(batches, AsyncIterable):
        return map(message, batches)

    async def messages() -> AsyncIterator[Message]:
        async for batch in batches:
            yield message(batch)

    return messages()
