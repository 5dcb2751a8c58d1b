"""Every call of the client, written once for :class:`Client` and
:class:`AsyncClient`: the request built from the arguments, the stub method
it goes to, how the answer is converted, and the public docstring.

Nothing here does I/O. Each function returns a description of the call
(:class:`Unary`, :class:`ServerStream` or :class:`ClientStream`); the two
clients turn the same functions into their methods and differ only in how
they perform the call on the stub (see ``_sync.py`` and ``_async.py``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from metaas.client._convert import query_request, query_result, series_list, write_request
from metaas.client._types import (
    DurationLike,
    QueryResult,
    Series,
    SeriesList,
    TimeLike,
    duration_ms,
    to_ms,
)
from metaas.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    migration_pb2,
    migration_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)

T = TypeVar("T")

DEFAULT_STATS: Final = ("count", "mean", "p50", "p99", "max")
_DEFAULT_STEP_MS: Final = 60_000


@dataclass(frozen=True, slots=True)
class Stubs:
    """The generated stubs of one channel (the same classes serve a blocking
    and an asyncio channel)."""

    ingest: ingest_pb2_grpc.MetricsIngestStub
    query: query_pb2_grpc.MetricsQueryStub
    admin: migration_pb2_grpc.MigrationAdminStub

    @classmethod
    def on(cls, channel: grpc.Channel | grpc.aio.Channel) -> Stubs:
        return cls(
            ingest_pb2_grpc.MetricsIngestStub(channel),
            query_pb2_grpc.MetricsQueryStub(channel),
            migration_pb2_grpc.MigrationAdminStub(channel),
        )


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """Which stub method a call goes to, and how each answer message becomes
    what the method returns."""

    # Picks the stub method; its type depends on the channel, hence Any.
    rpc: Callable[[Stubs], Any]
    convert: Callable[[Any], T]
    # Seconds; None: the client's default timeout, unless ``bounded`` is false.
    timeout: float | None
    bounded: bool = field(default=True, kw_only=True)


@dataclass(frozen=True, slots=True)
class Unary(Call[T]):
    """One request, one answer."""

    request: Message


@dataclass(frozen=True, slots=True)
class ServerStream(Call[T]):
    """One request, a stream of answers, each converted on its own."""

    request: Message


@dataclass(frozen=True, slots=True)
class ClientStream(Call[T]):
    """A stream of requests, each built by ``message`` from one item the
    caller gives, and one answer."""

    message: Callable[[Sequence[Series]], Message]


def _accepted(response: ingest_pb2.WriteResponse) -> int:
    return response.accepted_samples


def _as_is(response: T) -> T:
    return response


def _with_new_key(batch: Sequence[Series]) -> ingest_pb2.WriteRequest:
    return write_request(batch, uuid.uuid4().hex)


def write(
    series: Iterable[Series],
    *,
    idempotency_key: str | None = None,
    timeout: float | None = None,
) -> Unary[int]:
    """Write samples, and return once the server has made them durable.

    Args:
        series: the samples, one :class:`Series` per (app, metric, labels);
            the same series may appear more than once. Times are Unix epoch
            milliseconds, within the server's retention (30 days by default)
            and at most a few minutes ahead of its clock; values are finite.
        idempotency_key: makes a retried request count once: a request sent
            again with the same key, within the server's idempotency window
            (10 minutes by default), is answered as the first was and applied
            once. When None, a key is made up for this call, so gRPC's own
            retries of UNAVAILABLE never double count.
        timeout: deadline of the call in seconds; None uses the client's.

    Returns:
        How many samples were made durable (written to the server's
        write-ahead log). They can be queried once the server has aggregated
        them: up to its flush interval (``--flush-interval-s``, 10 s by
        default) later.

    Raises:
        MetaasError: all of the request is applied or none of it.
            INVALID_ARGUMENT when a series is invalid (``violations`` name
            it, for example ``series[0].times_ms[3]``); RESOURCE_EXHAUSTED
            when the request is over the server's size limits (split it);
            ALREADY_EXISTS when ``idempotency_key`` was used for a
            different request; PERMISSION_DENIED for an app the caller may
            not write; and the codes any call may raise (see
            :class:`MetaasError`).
    """
    request = write_request(series, idempotency_key or uuid.uuid4().hex)
    return Unary(lambda stubs: stubs.ingest.Write, _accepted, timeout, request)


def write_stream(*, timeout: float | None = None) -> ClientStream[int]:
    # The docstring is the public one of Client.write_stream and
    # AsyncClient.write_stream, which take the batches: each client reads
    # them in its own way (an AsyncClient also from an async iterable).
    """Write batches of samples over one stream, for a steady flow of writes.

    Each batch is sent as one message and applied as :meth:`write` applies
    its request, with a key of its own; the server answers once, when the
    batches are exhausted.

    Args:
        batches: an iterable of batches, each a sequence of :class:`Series`;
            :class:`AsyncClient` also takes an async iterable.
        timeout: deadline of the whole stream in seconds; None uses the
            client's. The server also ends a stream that sends nothing for
            its idle timeout (30 s by default).

    Returns:
        How many samples were made durable, over all batches.

    Raises:
        MetaasError: as :meth:`write` does for a batch that is refused; the
            batches before it stay applied. DEADLINE_EXCEEDED also when the
            stream was idle for too long.
    """
    return ClientStream(lambda stubs: stubs.ingest.WriteStream, _accepted, timeout, _with_new_key)


def query_range(
    app: str,
    metric: str,
    start: TimeLike,
    end: TimeLike,
    *,
    step: DurationLike | None = None,
    step_ms: DurationLike | None = None,
    stats: Sequence[str] = DEFAULT_STATS,
    matchers: Mapping[str, str] | None = None,
    group_by: Sequence[str] = (),
    timeout: float | None = None,
) -> Unary[QueryResult]:
    """Statistics of a metric per time bucket, per group of series.

    Args:
        app: the app whose data to read.
        metric: the metric name, for example ``"router.latency_ms"``.
        start: start of the range, inclusive: Unix epoch milliseconds, or a
            timezone-aware datetime. A minute belongs to the range when its
            first millisecond does.
        end: end of the range, exclusive; as ``start``.
        step: width of each bucket: milliseconds, or a timedelta; a whole
            number of minutes (default one minute). Buckets start at
            ``start + k * step``.
        step_ms: the same as ``step`` (its earlier name); give one of them.
        stats: the statistics, answered in the order given: ``count``,
            ``sum``, ``min``, ``max``, ``mean``, the quantiles ``p50``,
            ``p90``, ``p95``, ``p99``, ``p999``, or ``q<fraction>`` such as
            ``q0.75``. Default: :data:`DEFAULT_STATS`.
        matchers: exact label matches; a series is selected when each
            matcher equals its label's value. None selects every series of
            the metric.
        group_by: label names; one result series for each combination of
            their values. Empty merges every selected series into one.
        timeout: deadline of the call in seconds; None uses the client's.

    Returns:
        A :class:`QueryResult`: one :class:`ResultSeries` per group, each
        with the start of every bucket that has data (buckets without data
        are left out) and, per stat, the values of those buckets. ``count``
        values are ints; the others are floats, in the metric's own unit.
        count, sum, min, max and mean are exact; a quantile is within 0.54%
        of the true value. Samples appear up to the server's flush interval
        (10 s by default) after :meth:`write` returns.

    Raises:
        ValueError: a naive datetime, or a step that is not a whole number
            of milliseconds.
        TypeError: both ``step`` and ``step_ms`` are given.
        MetaasError: INVALID_ARGUMENT for an unknown stat, a step that is
            not a multiple of a minute, or ``end`` not after ``start``
            (``violations`` name the request fields: ``stats[1]``,
            ``step_ms``, ``start_ms``, ``end_ms``); RESOURCE_EXHAUSTED when
            the answer would hold more steps or values than the server
            gives (the violations say which argument to change);
            PERMISSION_DENIED for an app the caller may not read; and the
            codes any call may raise (see :class:`MetaasError`).
    """
    if step is not None and step_ms is not None:
        raise TypeError("query_range takes step or step_ms (the same), not both")
    width = step if step is not None else step_ms
    request = query_request(
        app,
        metric,
        to_ms(start),
        to_ms(end),
        _DEFAULT_STEP_MS if width is None else duration_ms(width, "step"),
        stats,
        matchers,
        group_by,
    )
    return Unary(lambda stubs: stubs.query.QueryRange, query_result, timeout, request)


def list_series(
    app: str,
    start: TimeLike,
    end: TimeLike,
    *,
    metric: str | None = None,
    timeout: float | None = None,
) -> Unary[SeriesList]:
    """The metrics and label sets an app has data for in a range: to see
    what can be queried, and to tell a wrong metric name from no traffic.

    Args:
        app: the app whose series to list.
        start: start of the range, inclusive: Unix epoch milliseconds, or a
            timezone-aware datetime.
        end: end of the range, exclusive; as ``start``.
        metric: only the series of this metric; None lists every metric.
        timeout: deadline of the call in seconds; None uses the client's.

    Returns:
        A :class:`SeriesList`: every distinct (metric, labels) with data in
        the range, and the distinct metric names among them, both sorted.
        Empty when the app has no data there (not an error).

    Raises:
        ValueError: a naive datetime.
        MetaasError: INVALID_ARGUMENT for an empty app or ``end`` not after
            ``start`` (``violations`` name ``app``, ``start_ms``,
            ``end_ms``); PERMISSION_DENIED for an app the caller may not
            read; and the codes any call may raise (see
            :class:`MetaasError`).
    """
    request = query_pb2.ListSeriesRequest(
        app=app, start_ms=to_ms(start), end_ms=to_ms(end), metric=metric or ""
    )
    return Unary(lambda stubs: stubs.query.ListSeries, series_list, timeout, request)


def migration_status(
    app: str = "", *, include_history: bool = False, timeout: float | None = None
) -> Unary[migration_pb2.GetMigrationStatusResponse]:
    """The state of a migration between two backends (admin callers only).

    Args:
        app: also report this app's stage, check ratio and fallback; empty
            reports the configured flags instead.
        include_history: also return per-minute history (latency, calls,
            errors, comparisons), as the HTML report draws it.
        timeout: deadline of the call in seconds; None uses the client's.

    Returns:
        The ``metaas.v1.GetMigrationStatusResponse`` message:
        ``migration_enabled`` (false when no migration is configured), the
        old and new backends, per-backend traffic, errors, latency (ms) and
        write lag (s) over the sliding window, comparisons, recent
        mismatches, active fallbacks and failing ingest steps.

    Raises:
        MetaasError: PERMISSION_DENIED for a caller that is not an admin,
            or for an app it may not access; and the codes any call may
            raise (see :class:`MetaasError`).
    """
    request = migration_pb2.GetMigrationStatusRequest(app=app, include_history=include_history)
    return Unary(lambda stubs: stubs.admin.GetMigrationStatus, _as_is, timeout, request)


def verify_range(
    app: str,
    start: TimeLike,
    end: TimeLike,
    *,
    repair: bool = False,
    metrics: Sequence[str] = (),
    timeout: float | None = None,
) -> ServerStream[migration_pb2.VerifyRangeResponse]:
    """Compare the two backends of a migration over a range, and with
    ``repair`` copy the authoritative side over the other (admin callers
    only).

    Args:
        app: the app to verify.
        start: start of the range, inclusive: Unix epoch milliseconds, or a
            timezone-aware datetime.
        end: end of the range, exclusive; as ``start``.
        repair: copy the authoritative side's partials over the other where
            they differ.
        metrics: only these metrics; empty verifies every metric of the app.
        timeout: deadline of the whole verification in seconds. Unlike the
            other calls, None means no deadline: a verification takes as
            long as the data it reads.

    Returns:
        An iterator (for :class:`AsyncClient`, an async iterator) of
        ``metaas.v1.VerifyRangeResponse`` progress messages: series checked
        of the total, partials compared, mismatched and repaired. The last
        has ``done`` set, the authoritative backend and the first
        differences found. The call starts when iteration does; stopping
        early cancels it.

    Raises:
        ValueError: a naive datetime (at the call, before iterating).
        MetaasError: while iterating. FAILED_PRECONDITION when no migration
            is configured; INVALID_ARGUMENT for an empty app or ``end`` not
            after ``start``; PERMISSION_DENIED for a caller that is not an
            admin, or for an app it may not access; and the codes any call
            may raise (see :class:`MetaasError`).
    """
    request = migration_pb2.VerifyRangeRequest(
        app=app, start_ms=to_ms(start), end_ms=to_ms(end), repair=repair, metrics=list(metrics)
    )
    return ServerStream(
        lambda stubs: stubs.admin.VerifyRange, _as_is, timeout, request, bounded=False
    )
