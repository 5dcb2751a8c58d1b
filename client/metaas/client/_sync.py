"""The blocking client, for scripts and notebooks."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType

import grpc

from metaas.client._async import DEFAULT_STATS
from metaas.client._channel import (
    CHANNEL_OPTIONS,
    DEFAULT_TARGET,
    call_metadata,
    channel_credentials,
)
from metaas.client._convert import query_request, query_result, series_list, write_request
from metaas.client._errors import MetaasError
from metaas.client._types import QueryResult, Series, SeriesList, TimeLike, to_ms
from metaas.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    migration_pb2,
    migration_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)


class Client:
    """Blocking twin of :class:`metaas.client.AsyncClient`."""

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
        options = list(CHANNEL_OPTIONS)
        credentials = credentials or channel_credentials(
            tls=tls,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
        )
        self._channel = (
            grpc.secure_channel(target, credentials, options=options)
            if credentials is not None
            else grpc.insecure_channel(target, options=options)
        )
        self._ingest = ingest_pb2_grpc.MetricsIngestStub(self._channel)
        self._query = query_pb2_grpc.MetricsQueryStub(self._channel)
        self._admin = migration_pb2_grpc.MigrationAdminStub(self._channel)
        self._timeout = timeout
        self._metadata = call_metadata(token, metadata)

    def write(
        self,
        series: Iterable[Series],
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> int:
        request = write_request(series, idempotency_key or uuid.uuid4().hex)
        try:
            response: ingest_pb2.WriteResponse = self._ingest.Write(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise MetaasError.from_rpc_error(error) from None
        return response.accepted_samples

    def query_range(
        self,
        app: str,
        metric: str,
        start: TimeLike,
        end: TimeLike,
        *,
        step_ms: int = 60_000,
        stats: Sequence[str] = DEFAULT_STATS,
        matchers: Mapping[str, str] | None = None,
        group_by: Sequence[str] = (),
        timeout: float | None = None,
    ) -> QueryResult:
        request = query_request(
            app, metric, to_ms(start), to_ms(end), step_ms, stats, matchers, group_by
        )
        try:
            response: query_pb2.QueryRangeResponse = self._query.QueryRange(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise MetaasError.from_rpc_error(error) from None
        return query_result(response)

    def list_series(
        self,
        app: str,
        start: TimeLike,
        end: TimeLike,
        *,
        metric: str | None = None,
        timeout: float | None = None,
    ) -> SeriesList:
        request = query_pb2.ListSeriesRequest(
            app=app, start_ms=to_ms(start), end_ms=to_ms(end), metric=metric or ""
        )
        try:
            response: query_pb2.ListSeriesResponse = self._query.ListSeries(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise MetaasError.from_rpc_error(error) from None
        return series_list(response)

    def migration_status(
        self, app: str = "", *, include_history: bool = False, timeout: float | None = None
    ) -> migration_pb2.GetMigrationStatusResponse:
        """MigrationAdmin.GetMigrationStatus (admin callers)."""
        try:
            response: migration_pb2.GetMigrationStatusResponse = self._admin.GetMigrationStatus(
                migration_pb2.GetMigrationStatusRequest(app=app, include_history=include_history),
                timeout=self._deadline(timeout),
                metadata=self._metadata,
            )
        except grpc.RpcError as error:
            raise MetaasError.from_rpc_error(error) from None
        return response

    def verify_range(
        self,
        app: str,
        start: TimeLike,
        end: TimeLike,
        *,
        repair: bool = False,
        metrics: Sequence[str] = (),
        timeout: float | None = None,
    ) -> Iterator[migration_pb2.VerifyRangeResponse]:
        """MigrationAdmin.VerifyRange: progress messages, the last one done."""
        request = migration_pb2.VerifyRangeRequest(
            app=app, start_ms=to_ms(start), end_ms=to_ms(end), repair=repair, metrics=list(metrics)
        )
        try:
            yield from self._admin.VerifyRange(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise MetaasError.from_rpc_error(error) from None

    def close(self) -> None:
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

    def _deadline(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self._timeout
