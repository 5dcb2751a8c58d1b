"""What :class:`Client` and :class:`AsyncClient` share: the connection and
its settings, deadlines, error mapping, and making methods of the calls in
``_calls.py``."""

from __future__ import annotations

import inspect
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

from metaas.client._calls import Call, Stubs
from metaas.client._channel import (
    CHANNEL_OPTIONS,
    DEFAULT_TARGET,
    call_metadata,
    channel_credentials,
)
from metaas.client._errors import MetaasError

ChannelT = TypeVar("ChannelT", grpc.Channel, grpc.aio.Channel)
F = TypeVar("F", bound=Callable[..., Any])


class ClientBase(ABC, Generic[ChannelT]):
    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 10.0,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Open a channel to ``target`` (``HOST:PORT``); it connects at the
        first call.

        Args:
            target: the server's address.
            timeout: the default deadline of each call, in seconds (None: no
                deadline); every method takes its own ``timeout`` too.
            token: sent with every call as ``authorization: Bearer <token>``.
            tls: use TLS, trusting the system's certificate authorities.
            root_certificates: certificate authorities to trust (PEM);
                implies TLS.
            certificate_chain: a client certificate (PEM) for mutual TLS,
                with ``private_key``; implies TLS.
            private_key: the client certificate's private key (PEM).
            credentials: ready-made channel credentials, used instead of the
                TLS arguments.
            metadata: more ``(key, value)`` pairs sent with every call.

        Raises:
            ValueError: ``certificate_chain`` without ``private_key``, or the
                other way round.
        """
        credentials = credentials or channel_credentials(
            tls=tls,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
        )
        self._channel: ChannelT = self._open_channel(target, credentials, list(CHANNEL_OPTIONS))
        self._stubs = Stubs.on(self._channel)
        self._timeout = timeout
        self._metadata = call_metadata(token, metadata)

    @abstractmethod
    def _open_channel(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None,
        options: list[tuple[str, Any]],
    ) -> ChannelT:
        """A secure channel with ``credentials``, or an insecure one."""

    def _start(self, call: Call[Any], request: Any) -> Any:
        """Invoke ``call``'s stub method with ``request`` (a message, or an
        iterator of them), the deadline and the metadata: what the stub
        returns (an answer or an iterator of answers; for an asyncio
        channel, something to await or iterate)."""
        method = call.rpc(self._stubs)
        timeout = call.timeout
        if timeout is None and call.bounded:
            timeout = self._timeout
        return method(request, timeout=timeout, metadata=self._metadata)


@contextmanager
def rpc_errors() -> Iterator[None]:
    """Raise a failed RPC as :class:`MetaasError` (an asyncio error is a
    grpc.RpcError too)."""
    try:
        yield
    except grpc.RpcError as error:
        raise MetaasError.from_rpc_error(error) from None


def method_of(make: Callable[..., Call[Any]], method: F, owner: str, container: Any) -> F:
    """Present ``method``, which performs the calls that ``make`` describes,
    as if written out in class ``owner``: ``make``'s name and docstring, and
    its signature with ``self`` first and, for ``make``'s ``Call[T]``, a
    return type of ``T`` (``container`` None) or ``container[T]``. help(),
    inspect and documentation tools then show the arguments and their
    documentation."""
    signature = inspect.signature(make, eval_str=True)
    (returned,) = typing.get_args(signature.return_annotation)
    self = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    signature = signature.replace(
        parameters=[self, *signature.parameters.values()],
        return_annotation=returned if container is None else container[returned],
    )
    presented: Any = method
    presented.__name__ = make.__name__
    presented.__qualname__ = f"{owner}.{make.__name__}"
    presented.__doc__ = make.__doc__
    presented.__signature__ = signature
    presented.__annotations__ = {
        **{p.name: p.annotation for p in signature.parameters.values() if p is not self},
        "return": signature.return_annotation,
    }
    return method


def documented_by(make: Callable[..., Call[Any]]) -> Callable[[F], F]:
    """Give a method written out in each client the docstring of ``make``."""

    def document(method: F) -> F:
        method.__doc__ = make.__doc__
        return method

    return document
