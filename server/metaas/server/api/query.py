"""metaas.v1.MetricsQuery."""

from __future__ import annotations

from collections.abc import Sequence

from metaas.server.api.rpc import Call, Rpcs, RpcServicer, unary
from metaas.server.api.validation import too_large, validate_list_series, validate_query
from metaas.server.config import LimitsConfig
from metaas.server.migration.router import MigrationRouter
from metaas.server.model import is_view
from metaas.server.query import Pacer, ResultGroup, ResultTooLarge
from metaas.v1 import query_pb2, query_pb2_grpc

SERVICE = "metaas.v1.MetricsQuery"


class MetricsQueryServicer(RpcServicer, query_pb2_grpc.MetricsQueryServicer):
    def __init__(self, router: MigrationRouter, *, limits: LimitsConfig, rpcs: Rpcs) -> None:
        super().__init__(rpcs)
        self._router = router
        self._limits = limits

    @unary(SERVICE, deadline=True)
    async def QueryRange(
        self, request: query_pb2.QueryRangeRequest, call: Call
    ) -> query_pb2.QueryRangeResponse:
        query = validate_query(request, limits=self._limits)
        call.principal.require_app(query.app, "app")
        span = call.span
        try:
            routed = await self._router.query_range(query, span)
        except ResultTooLarge as error:
            narrow = ("matchers", "group_by") if query.group_by else ("matchers",)
            raise too_large(str(error), (*narrow, "step_ms", "stats")) from error
        if routed.comparison is not None:
            span.end_after(routed.comparison)  # published on this span
        span.set_attributes(
            {
                "metaas.result.series": len(routed.groups),
                "metaas.served_by": routed.served_by,
                "metaas.migration.stage": routed.stage.value,
            }
        )
        return await _response(routed.served_by, routed.groups, [s.name for s in query.stats])

    @unary(SERVICE, deadline=True)
    async def ListSeries(
        self, request: query_pb2.ListSeriesRequest, call: Call
    ) -> query_pb2.ListSeriesResponse:
        validate_list_series(request, limits=self._limits)
        call.principal.require_app(request.app, "app")
        found, _served_by = await self._router.list_series(
            request.app, request.start_ms, request.end_ms, request.metric or None
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
