"""metaas.v1.MetricsQuery."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, TypeVar

import grpc
from opentelemetry import trace

from metaas.server.api.admission import Admission
from metaas.server.api.auth import Authenticator, Principal
from metaas.server.api.errors import RequestError, abort, from_storage
from metaas.server.api.tracing import RpcSpan, rpc_span
from metaas.server.api.validation import too_large, validate_list_series, validate_query
from metaas.server.config import LimitsConfig
from metaas.server.migration.router import MigrationRouter
from metaas.server.model import is_view
from metaas.server.query import Pacer, ResultGroup, ResultTooLarge
from metaas.server.storage.errors import StorageError
from metaas.v1 import query_pb2, query_pb2_grpc

SERVICE = "metaas.v1.MetricsQuery"
_T = TypeVar("_T")


class MetricsQueryServicer(query_pb2_grpc.MetricsQueryServicer):
    def __init__(
        self,
        router: MigrationRouter,
        *,
        limits: LimitsConfig,
        tracer: trace.Tracer,
        authenticator: Authenticator,
        admission: Admission,
    ) -> None:
        self._auth = authenticator
        self._admission = admission
        self._router = router
        self._limits = limits
        self._tracer = tracer

    async def QueryRange(
        self,
        request: query_pb2.QueryRangeRequest,
        context: grpc.aio.ServicerContext[
            query_pb2.QueryRangeRequest, query_pb2.QueryRangeResponse
        ],
    ) -> query_pb2.QueryRangeResponse:
        try:
            with rpc_span(self._tracer, SERVICE, "QueryRange") as span:
                principal = self._auth.authenticate(context)
                span.set_attribute("enduser.id", principal.name)
                with self._admission.admit("QueryRange", principal.name):
                    return await _within_deadline(
                        context, self._query_range(request, principal, span)
                    )
        except RequestError as error:
            await abort(context, error)

    async def _query_range(
        self, request: query_pb2.QueryRangeRequest, principal: Principal, span: RpcSpan
    ) -> query_pb2.QueryRangeResponse:
        query = validate_query(request, limits=self._limits)
        principal.require_app(query.app, "app")
        try:
            routed = await _storage_call(self._router.query_range(query))
        except ResultTooLarge as error:
            narrow = ("matchers", "group_by") if query.group_by else ("matchers",)
            raise too_large(str(error), (*narrow, "step_ms", "stats")) from error
        if routed.comparison is not None:
            span.end_after(routed.comparison)  # its attributes land on this span
        span.set_attributes(
            {
                "metaas.result.series": len(routed.groups),
                "metaas.served_by": routed.served_by,
                "metaas.migration.stage": routed.stage.value,
            }
        )
        return await _response(routed.served_by, routed.groups, [s.name for s in query.stats])

    async def ListSeries(
        self,
        request: query_pb2.ListSeriesRequest,
        context: grpc.aio.ServicerContext[
            query_pb2.ListSeriesRequest, query_pb2.ListSeriesResponse
        ],
    ) -> query_pb2.ListSeriesResponse:
        try:
            with rpc_span(self._tracer, SERVICE, "ListSeries") as span:
                principal = self._auth.authenticate(context)
                span.set_attribute("enduser.id", principal.name)
                with self._admission.admit("ListSeries", principal.name):
                    return await _within_deadline(context, self._list_series(request, principal))
        except RequestError as error:
            await abort(context, error)

    async def _list_series(
        self, request: query_pb2.ListSeriesRequest, principal: Principal
    ) -> query_pb2.ListSeriesResponse:
        validate_list_series(request, limits=self._limits)
        principal.require_app(request.app, "app")
        found, _served_by = await _storage_call(
            self._router.list_series(
                request.app, request.start_ms, request.end_ms, request.metric or None
            )
        )
        # Views are stored as metrics of their own; they are not the app's.
        ordered = sorted(
            (s for s in found if not is_view(s.metric)), key=lambda s: (s.metric, s.labels)
        )
        return query_pb2.ListSeriesResponse(
            series=[
                query_pb2.SeriesDescriptor(metric=s.metric, labels=s.label_map) for s in ordered
            ],
            metrics=sorted({s.metric for s in ordered}),
        )


async def _within_deadline(
    context: grpc.aio.ServicerContext[Any, Any], call: Coroutine[Any, Any, _T]
) -> _T:
    """Run ``call`` within the caller's deadline; past it, the call is
    cancelled (backend calls, and the query's work at its next pause: see
    ``query.pacing``) and the caller gets DEADLINE_EXCEEDED at once."""
    remaining = context.time_remaining()
    try:
        async with asyncio.timeout(remaining):
            return await call
    except TimeoutError as error:
        raise RequestError(
            grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the answer was ready"
        ) from error


async def _response(
    served_by: str, groups: Sequence[ResultGroup], names: list[str]
) -> query_pb2.QueryRangeResponse:
    """The answer as a message, built group by group with pauses: converting
    the largest answers (LimitsConfig.max_result_values) takes about 0.2 s."""
    response = query_pb2.QueryRangeResponse(served_by=served_by)
    pacer = Pacer()
    for group in groups:
        response.series.add(
            labels=dict(group.labels),
            times_ms=group.times_ms,
            stats=[
                query_pb2.StatValues(stat=name, values=values)
                for name, values in zip(names, group.values, strict=True)
            ],
        )
        await pacer.pause()
    return response


async def _storage_call(call: Awaitable[_T]) -> _T:
    try:
        return await call
    except StorageError as error:
        raise from_storage(error) from error
