"""metaas.v1.MigrationAdmin (admin callers only)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
import numpy as np

from metaas.server.api.auth import Principal
from metaas.server.api.errors import RequestError, invalid
from metaas.server.api.rpc import Call, Rpcs, RpcServicer, server_stream, unary
from metaas.server.api.validation import Violations, check_range
from metaas.server.migration.guard import Guard
from metaas.server.migration.routing import Routing
from metaas.server.migration.stages import Role
from metaas.server.migration.verify import verify_range
from metaas.v1 import migration_pb2, migration_pb2_grpc

SERVICE = "metaas.v1.MigrationAdmin"


class MigrationAdminServicer(RpcServicer, migration_pb2_grpc.MigrationAdminServicer):
    def __init__(
        self,
        routing: Routing,
        guard: Guard,
        *,
        write_lag_s: Callable[[], dict[str, float]],
        ingest_problems: Callable[[], list[str]],
        kafka_partitions: Callable[[], list[migration_pb2.KafkaPartition]] = list,
        rpcs: Rpcs,
    ) -> None:
        super().__init__(rpcs)
        self._routing = routing
        self._guard = guard
        self._write_lag_s = write_lag_s
        self._ingest_problems = ingest_problems
        self._kafka_partitions = kafka_partitions

    @unary(SERVICE, admin=True, admit=False)
    async def GetMigrationStatus(
        self, request: migration_pb2.GetMigrationStatusRequest, call: Call
    ) -> migration_pb2.GetMigrationStatusResponse:
        if request.app:
            call.principal.require_app(request.app, "app")
        return self._status(request, call.principal)

    def _status(
        self, request: migration_pb2.GetMigrationStatusRequest, principal: Principal
    ) -> migration_pb2.GetMigrationStatusResponse:
        """The status as ``principal`` may see it: mismatches and fallbacks of
        the apps it is granted only (a diff carries label values)."""
        routing = self._routing
        window = self._guard.window
        lag = self._write_lag_s()
        response = migration_pb2.GetMigrationStatusResponse(
            migration_enabled=routing.enabled,
            old_backend=routing.backend_name(Role.OLD),
            new_backend=routing.backend_name(Role.NEW),
            # The flag file names other apps in its targeting rules.
            flags=routing.flags.describe() if routing.enabled and principal.apps is None else "",
            window_seconds=int(window.window_s),
            comparisons=window.total_comparisons,
            mismatches=window.total_mismatches,
            backends=[
                migration_pb2.BackendStatus(
                    role=b.role,
                    backend=b.backend,
                    reads=b.reads,
                    writes=b.writes,
                    read_errors=b.read_errors,
                    write_errors=b.write_errors,
                    latency_p50_ms=b.p50_ms,
                    latency_p95_ms=b.p95_ms,
                    latency_p99_ms=b.p99_ms,
                    write_lag_seconds=lag.get(b.role, 0.0),
                )
                for b in window.backends()
            ],
            recent_mismatches=[
                migration_pb2.MismatchSample(
                    app=c.app,
                    metric=c.metric,
                    stage=c.stage,
                    at_ms=c.at_ms,
                    primary_backend=c.primary.backend,
                    shadow_backend=c.candidate.backend,
                    primary_ms=c.primary.duration_s * 1000,
                    shadow_ms=c.candidate.duration_s * 1000,
                    shadow_error=c.candidate.error or "",
                    diff=list(c.diff),
                )
                for c in reversed(window.mismatches)
                if principal.may_access(c.app)
            ],
            fallbacks=[
                migration_pb2.Fallback(
                    app=f.app, stage=f.stage.value, reason=f.reason, since_ms=f.since_ms
                )
                for f in self._guard.fallbacks.values()
                if principal.may_access(f.app)
            ],
            ingest_problems=self._ingest_problems(),
            kafka_partitions=self._kafka_partitions(),
        )
        if request.app:
            response.app = request.app
            response.stage = routing.route(request.app).stage.value
            response.check_ratio = routing.check_ratio(request.app)
        if request.include_history:
            for role, points in window.history().items():
                for point in points:
                    p50, p95, p99 = (
                        np.percentile(point.latencies_ms, [50, 95, 99]).tolist()
                        if point.latencies_ms
                        else [0.0] * 3
                    )
                    response.history.append(
                        migration_pb2.HistoryPoint(
                            role=role,
                            minute_ms=point.minute_ms,
                            latency_p50_ms=p50,
                            latency_p95_ms=p95,
                            latency_p99_ms=p99,
                            calls=point.calls,
                            errors=point.errors,
                            comparisons=point.comparisons,
                            mismatches=point.mismatches,
                        )
                    )
        return response

    @server_stream(SERVICE, admin=True, admit=False)
    async def VerifyRange(
        self, request: migration_pb2.VerifyRangeRequest, call: Call
    ) -> AsyncIterator[migration_pb2.VerifyRangeResponse]:
        if request.app:
            call.principal.require_app(request.app, "app")
        self._validate(request)
        app = request.app
        main_role = self._guard.read_role(self._routing.route(app))
        other_role = Role.OLD if main_role is Role.NEW else Role.NEW
        async for progress in verify_range(
            (main_role, self._routing.storage(main_role)),
            (other_role, self._routing.storage(other_role)),
            app=app,
            start_ms=request.start_ms,
            end_ms=request.end_ms,
            metrics=list(request.metrics),
            repair=request.repair,
        ):
            yield migration_pb2.VerifyRangeResponse(
                series_total=progress.series_total,
                series_checked=progress.series_checked,
                partials_compared=progress.partials_compared,
                partials_mismatched=progress.partials_mismatched,
                partials_repaired=progress.partials_repaired,
                done=progress.done,
                authoritative_backend=progress.authoritative,
                samples=progress.samples,
            )

    def _validate(self, request: migration_pb2.VerifyRangeRequest) -> None:
        if not self._routing.enabled:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "no migration is configured (set METAAS_MIGRATION_TARGET)",
            )
        if not request.app:
            raise invalid("app", "is required")
        v = Violations()
        check_range(v, request.start_ms, request.end_ms)
        v.raise_if_any()
