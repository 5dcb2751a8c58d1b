"""metaas.v1.MigrationAdmin (admin callers only)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
from opentelemetry import trace

from metaas.server.api.auth import Authenticator, Principal
from metaas.server.api.errors import RequestError, abort, from_storage, invalid
from metaas.server.api.tracing import rpc_span
from metaas.server.api.validation import Violations, check_range
from metaas.server.migration.router import MigrationRouter
from metaas.server.migration.stages import Role
from metaas.server.migration.verify import verify_range
from metaas.server.storage.errors import StorageError
from metaas.v1 import migration_pb2, migration_pb2_grpc

SERVICE = "metaas.v1.MigrationAdmin"


class MigrationAdminServicer(migration_pb2_grpc.MigrationAdminServicer):
    def __init__(
        self,
        router: MigrationRouter,
        *,
        write_lag_s: Callable[[], dict[str, float]],
        ingest_problems: Callable[[], list[str]],
        tracer: trace.Tracer,
        authenticator: Authenticator,
    ) -> None:
        self._router = router
        self._write_lag_s = write_lag_s
        self._ingest_problems = ingest_problems
        self._tracer = tracer
        self._auth = authenticator

    async def GetMigrationStatus(
        self,
        request: migration_pb2.GetMigrationStatusRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> migration_pb2.GetMigrationStatusResponse:
        try:
            with rpc_span(self._tracer, SERVICE, "GetMigrationStatus"):
                principal = self._auth.authenticate(context)
                principal.require_admin()
                if request.app:
                    principal.require_app(request.app, "app")
                return self._status(request, principal)
        except RequestError as error:
            await abort(context, error)

    def _status(
        self, request: migration_pb2.GetMigrationStatusRequest, principal: Principal
    ) -> migration_pb2.GetMigrationStatusResponse:
        """The status as ``principal`` may see it: mismatches and fallbacks of
        the apps it is granted only (a diff carries label values)."""
        router = self._router
        window = router.window
        lag = self._write_lag_s()
        response = migration_pb2.GetMigrationStatusResponse(
            migration_enabled=router.enabled,
            old_backend=router.backend_name(Role.OLD),
            new_backend=router.backend_name(Role.NEW),
            # The flag file names other apps in its targeting rules.
            flags=router.flags.describe() if router.enabled and principal.apps is None else "",
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
                for f in router.fallbacks.values()
                if principal.may_access(f.app)
            ],
            ingest_problems=self._ingest_problems(),
        )
        if request.app:
            response.app = request.app
            response.stage = router.stage(request.app).value
            response.check_ratio = router.flags.check_ratio(request.app) if router.enabled else 0.0
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

    async def VerifyRange(
        self,
        request: migration_pb2.VerifyRangeRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[migration_pb2.VerifyRangeResponse]:
        try:
            with rpc_span(self._tracer, SERVICE, "VerifyRange"):
                principal = self._auth.authenticate(context)
                principal.require_admin()
                if request.app:
                    principal.require_app(request.app, "app")
                self._validate(request)
                router = self._router
                app = request.app
                main_role = (
                    Role.NEW if router.authoritative(app) is router.storage(Role.NEW) else Role.OLD
                )
                other_role = Role.OLD if main_role is Role.NEW else Role.NEW
                try:
                    async for progress in verify_range(
                        (main_role, router.storage(main_role)),
                        (other_role, router.storage(other_role)),
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
                except StorageError as error:
                    raise from_storage(error) from error
        except RequestError as error:
            await abort(context, error)

    def _validate(self, request: migration_pb2.VerifyRangeRequest) -> None:
        if not self._router.enabled:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "no migration is configured (set METAAS_MIGRATION_TARGET)",
            )
        if not request.app:
            raise invalid("app", "is required")
        v = Violations()
        check_range(v, request.start_ms, request.end_ms)
        v.raise_if_any()
