"""Between typed client values and metaas.v1 messages."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from metaas.client._types import QueryResult, ResultSeries, Series, SeriesInfo, SeriesList
from metaas.v1 import ingest_pb2, query_pb2


def write_request(series: Iterable[Series], idempotency_key: str) -> ingest_pb2.WriteRequest:
    return ingest_pb2.WriteRequest(
        idempotency_key=idempotency_key,
        series=[
            ingest_pb2.SeriesSamples(
                app=s.app,
                metric=s.metric,
                labels=dict(s.labels),
                times_ms=s.times_ms,
                values=s.values,
            )
            for s in series
        ],
    )


def query_request(
    app: str,
    metric: str,
    start_ms: int,
    end_ms: int,
    step_ms: int,
    stats: Sequence[str],
    matchers: Mapping[str, str] | None,
    group_by: Sequence[str],
) -> query_pb2.QueryRangeRequest:
    return query_pb2.QueryRangeRequest(
        app=app,
        metric=metric,
        matchers=dict(matchers or {}),
        start_ms=start_ms,
        end_ms=end_ms,
        step_ms=step_ms,
        stats=list(stats),
        group_by=list(group_by),
    )


def query_result(response: query_pb2.QueryRangeResponse) -> QueryResult:
    return QueryResult(
        series=tuple(
            ResultSeries(
                labels=dict(s.labels),
                times_ms=tuple(s.times_ms),
                stats={v.stat: _stat_values(v) for v in s.stats},
            )
            for s in response.series
        ),
        served_by=response.served_by,
    )


def _stat_values(values: query_pb2.StatValues) -> tuple[int | float, ...]:
    # The protocol carries every stat as a double; a count is a whole number.
    if values.stat == "count":
        return tuple(int(v) if math.isfinite(v) else v for v in values.values)
    return tuple(values.values)


def series_list(response: query_pb2.ListSeriesResponse) -> SeriesList:
    return SeriesList(
        series=tuple(SeriesInfo(s.metric, dict(s.labels)) for s in response.series),
        metrics=tuple(response.metrics),
    )
