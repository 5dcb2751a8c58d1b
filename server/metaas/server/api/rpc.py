"""What every RPC does around its own work, written once: a server span, the
caller's authentication (and admin check), admission, the caller's deadline,
and the mapping of refusals and storage failures to gRPC statuses.

A handler is an ordinary method taking the request and a ``Call``; it
raises ``RequestError`` for a refusal, lets ``StorageError`` through, and
never touches gRPC's abort machinery::

    @unary(SERVICE, deadline=True)
    async def QueryRange(self, request, call: Call) -> QueryRangeResponse: ...
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from opentelemetry import trace

from metaas.server.api.admission import Admission
from metaas.server.api.auth import Authenticator, Principal
from metaas.server.api.errors import RequestError, abort, from_storage
from metaas.server.api.tracing import RpcSpan, rpc_span
from metaas.server.storage.errors import StorageError

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Servicer = TypeVar("_Servicer", bound="RpcServicer")
_Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True, slots=True)
class Rpcs:
    """What the wrapper needs, shared by the servicers."""

    tracer: trace.Tracer
    authenticator: Authenticator
    admission: Admission


class RpcServicer:
    """Base of the servicers whose methods are wrapped by ``unary`` or
    ``server_stream``."""

    def __init__(self, rpcs: Rpcs) -> None:
        self.rpcs = rpcs


@dataclass(frozen=True, slots=True)
class Call:
    """One RPC as its handler sees it."""

    context: _Context
    principal: Principal
    span: RpcSpan
    authenticator: Authenticator

    def reauthenticate(self) -> Principal:
        """The caller again (a stream's next message): a token revoked since
        the call began is refused now."""
        return self.authenticator.authenticate(self.context)


def unary(
    service: str, *, admin: bool = False, admit: bool = True, deadline: bool = False
) -> Callable[
    [Callable[[_Servicer, _Request, Call], Awaitable[_Response]]],
    Callable[[_Servicer, _Request, _Context], Awaitable[_Response]],
]:
    """Wrap a unary handler: ``admin`` callers only, holding an admission
    slot when ``admit``, and cut off at the caller's deadline when
    ``deadline`` (its work is cancelled, the caller gets DEADLINE_EXCEEDED)."""

    def wrap(
        handler: Callable[[_Servicer, _Request, Call], Awaitable[_Response]],
    ) -> Callable[[_Servicer, _Request, _Context], Awaitable[_Response]]:
        method = handler.__name__

        @functools.wraps(handler)
        async def rpc(self: _Servicer, request: _Request, context: _Context) -> _Response:
            try:
                with (
                    _opened(self.rpcs, service, method, context, admin=admin) as call,
                    _admitted(self.rpcs, method, call, admit),
                ):
                    work = handler(self, request, call)
                    return await (_within_deadline(context, work) if deadline else work)
            except RequestError as error:
                await abort(context, error)

        return rpc

    return wrap


def server_stream(
    service: str, *, admin: bool = False, admit: bool = True
) -> Callable[
    [Callable[[_Servicer, _Request, Call], AsyncIterator[_Response]]],
    Callable[[_Servicer, _Request, _Context], AsyncIterator[_Response]],
]:
    """Wrap a handler that yields its responses (see ``unary``)."""

    def wrap(
        handler: Callable[[_Servicer, _Request, Call], AsyncIterator[_Response]],
    ) -> Callable[[_Servicer, _Request, _Context], AsyncIterator[_Response]]:
        method = handler.__name__

        @functools.wraps(handler)
        async def rpc(
            self: _Servicer, request: _Request, context: _Context
        ) -> AsyncIterator[_Response]:
            try:
                with (
                    _opened(self.rpcs, service, method, context, admin=admin) as call,
                    _admitted(self.rpcs, method, call, admit),
                ):
                    async for response in handler(self, request, call):
                        yield response
            except RequestError as error:
                await abort(context, error)

        return rpc

    return wrap


@contextmanager
def _opened(
    rpcs: Rpcs, service: str, method: str, context: _Context, *, admin: bool
) -> Iterator[Call]:
    """The RPC's span and its authenticated caller; storage failures inside
    become the caller's status here, the one place they are mapped."""
    with rpc_span(rpcs.tracer, service, method) as span:
        principal = rpcs.authenticator.authenticate(context)
        span.set_attribute("enduser.id", principal.name)
        if admin:
            principal.require_admin()
        try:
            yield Call(context, principal, span, rpcs.authenticator)
        except StorageError as error:
            raise from_storage(error) from error


def _admitted(rpcs: Rpcs, method: str, call: Call, admit: bool) -> Any:
    return rpcs.admission.admit(method, call.principal.name) if admit else nullcontext()


async def _within_deadline(context: _Context, work: Awaitable[_Response]) -> _Response:
    """Run ``work`` within the caller's deadline; past it, the work is
    cancelled (backend calls, and a query's work at its next pause: see
    ``query.pacing``) and the caller gets DEADLINE_EXCEEDED at once."""
    try:
        async with asyncio.timeout(context.time_remaining()):
            return await work
    except TimeoutError as error:
        raise RequestError(
            grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the answer was ready"
        ) from error
