"""The blocking client."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc

from metaas.client import _calls as calls
from metaas.client._base import ClientBase, documented_by, method_of, rpc_errors
from metaas.client._calls import ServerStream, Unary
from metaas.client._types import Series

P = ParamSpec("P")
T = TypeVar("T")


def _blocking(make: Callable[P, Unary[T]]) -> Callable[Concatenate[Client, P], T]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._unary(make(*args, **kwargs))

    return method_of(make, method, "Client", None)


def _blocking_stream(
    make: Callable[P, ServerStream[T]],
) -> Callable[Concatenate[Client, P], Iterator[T]]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        return self._server_stream(make(*args, **kwargs))

    return method_of(make, method, "Client", Iterator)


class Client(ClientBase[grpc.Channel]):
    """A blocking metaas client, for scripts, notebooks and threaded programs.

    It holds one gRPC channel, which connects at the first call and may be
    shared by threads; close it with :meth:`close` or a ``with`` block. Each
    method is one RPC with a deadline: the client's ``timeout`` unless the
    call gives its own. gRPC itself retries UNAVAILABLE (5 attempts,
    exponential backoff), which is safe for writes because each carries an
    idempotency key. A refused or failed call raises :class:`MetaasError`.

    Example::

        with Client("127.0.0.1:50051", timeout=5) as client:
            client.write([Series("shop", "router.latency_ms", [now_ms], [12.5])])
            result = client.query_range(
                "shop", "router.latency_ms", now_ms - 3_600_000, now_ms,
                step=timedelta(minutes=5), stats=["count", "p99"],
            )

    :class:`AsyncClient` has the same methods, as coroutines.
    """

    write = _blocking(calls.write)
    query_range = _blocking(calls.query_range)
    list_series = _blocking(calls.list_series)
    migration_status = _blocking(calls.migration_status)
    verify_range = _blocking_stream(calls.verify_range)

    @documented_by(calls.write_stream)
    def write_stream(
        self, batches: Iterable[Sequence[Series]], *, timeout: float | None = None
    ) -> int:
        call = calls.write_stream(timeout=timeout)
        with rpc_errors():
            response = self._start(call, map(call.message, batches))
        return call.convert(response)

    def close(self) -> None:
        """Close the channel; calls still in progress are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _open_channel(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None,
        options: list[tuple[str, Any]],
    ) -> grpc.Channel:
        if credentials is None:
            return grpc.insecure_channel(target, options=options)
        return grpc.secure_channel(target, credentials, options=options)

    def _unary(self, call: Unary[T]) -> T:
        with rpc_errors():
            response = self._start(call, call.request)
        return call.convert(response)

    def _server_stream(self, call: ServerStream[T]) -> Iterator[T]:
        responses = self._start(call, call.request)
        try:
            with rpc_errors():
                for response in responses:
                    yield call.convert(response)
        finally:
            responses.cancel()
