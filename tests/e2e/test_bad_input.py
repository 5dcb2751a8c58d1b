"""Every validation rule, through the real server: the right status, the field
named in a google.rpc.BadRequest, nothing applied, the server still healthy."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from metaas.client import Client, Series
from metaas.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc
from tests.support import ServerProcess, eventually

MINUTE = 60_000
DAY = 86_400_000
# Taken at collection: cases leave hours of margin for a long test run.
NOW = time.time_ns() // 1_000_000
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclass
class Stubs:
    ingest: ingest_pb2_grpc.MetricsIngestStub
    query: query_pb2_grpc.MetricsQueryStub
    target: str


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stubs]:
    server = ServerProcess(Path(tmp_path_factory.mktemp("bad-input"))).start()
    options = [("grpc.max_send_message_length", 128 * 1024 * 1024)]
    try:
        with grpc.insecure_channel(server.target, options=options) as channel:
            yield Stubs(
                ingest_pb2_grpc.MetricsIngestStub(channel),
                query_pb2_grpc.MetricsQueryStub(channel),
                server.target,
            )
        assert server.process is not None
        assert server.process.poll() is None, "the server must survive every bad request"
    finally:
        server.stop()


def series(**overrides: Any) -> ingest_pb2.SeriesSamples:
    fields: dict[str, Any] = {
        "app": "shop",
        "metric": "router.latency_ms",
        "labels": {"dyno": "web.1"},
        "times_ms": [NOW - MINUTE, NOW],
        "values": [1.0, 2.0],
    }
    fields.update(overrides)
    return ingest_pb2.SeriesSamples(**fields)


def violations(error: grpc.RpcError) -> list[str]:
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            found = []
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                assert detail.Unpack(bad)
                found.extend(v.field for v in bad.field_violations)
            return found
    return []


WRITE_CASES: dict[str, tuple[ingest_pb2.WriteRequest, grpc.StatusCode, str]] = {
    "no series": (ingest_pb2.WriteRequest(), INVALID, "series"),
    "app missing": (ingest_pb2.WriteRequest(series=[series(app="")]), INVALID, "series[0].app"),
    "app charset": (
        ingest_pb2.WriteRequest(series=[series(app="shop floor")]),
        INVALID,
        "series[0].app",
    ),
    "app too long": (
        ingest_pb2.WriteRequest(series=[series(app="a" * 129)]),
        INVALID,
        "series[0].app",
    ),
    "metric charset": (
        ingest_pb2.WriteRequest(series=[series(), series(metric="-x")]),
        INVALID,
        "series[1].metric",
    ),
    "too many labels": (
        ingest_pb2.WriteRequest(series=[series(labels={f"l{i}": "v" for i in range(17)})]),
        INVALID,
        "series[0].labels",
    ),
    "label name": (
        ingest_pb2.WriteRequest(series=[series(labels={"1dyno": "web.1"})]),
        INVALID,
        'series[0].labels["1dyno"]',
    ),
    "label value too long": (
        ingest_pb2.WriteRequest(series=[series(labels={"dyno": "w" * 257})]),
        INVALID,
        'series[0].labels["dyno"]',
    ),
    "label value empty": (
        ingest_pb2.WriteRequest(series=[series(labels={"dyno": ""})]),
        INVALID,
        'series[0].labels["dyno"]',
    ),
    "nan": (
        ingest_pb2.WriteRequest(series=[series(values=[1.0, math.nan])]),
        INVALID,
        "series[0].values[1]",
    ),
    "infinity": (
        ingest_pb2.WriteRequest(series=[series(values=[math.inf, 1.0])]),
        INVALID,
        "series[0].values[0]",
    ),
    "negative infinity": (
        ingest_pb2.WriteRequest(series=[series(values=[1.0, -math.inf])]),
        INVALID,
        "series[0].values[1]",
    ),
    "magnitude beyond 1e289": (
        ingest_pb2.WriteRequest(series=[series(values=[1e308, 1e308])]),
        INVALID,
        "series[0].values[0]",
    ),
    "app with a trailing newline": (
        ingest_pb2.WriteRequest(series=[series(app="shop\n")]),
        INVALID,
        "series[0].app",
    ),
    "metric with a trailing newline": (
        ingest_pb2.WriteRequest(series=[series(metric="router.latency_ms\n")]),
        INVALID,
        "series[0].metric",
    ),
    "label name with a trailing newline": (
        ingest_pb2.WriteRequest(series=[series(labels={"dyno\n": "web.1"})]),
        INVALID,
        'series[0].labels["dyno\n"]',
    ),
    "label value with a trailing newline": (
        ingest_pb2.WriteRequest(series=[series(labels={"dyno": "web.1\n"})]),
        INVALID,
        'series[0].labels["dyno"]',
    ),
    "length mismatch": (
        ingest_pb2.WriteRequest(series=[series(values=[1.0])]),
        INVALID,
        "series[0].values",
    ),
    "no samples": (
        ingest_pb2.WriteRequest(series=[series(times_ms=[], values=[])]),
        INVALID,
        "series[0].times_ms",
    ),
    "older than retention": (
        ingest_pb2.WriteRequest(series=[series(times_ms=[NOW - 31 * DAY, NOW])]),
        INVALID,
        "series[0].times_ms[0]",
    ),
    "negative time": (
        ingest_pb2.WriteRequest(series=[series(times_ms=[NOW, -5])]),
        INVALID,
        "series[0].times_ms[1]",
    ),
    "future": (
        ingest_pb2.WriteRequest(series=[series(times_ms=[NOW, NOW + 120 * MINUTE])]),
        INVALID,
        "series[0].times_ms[1]",
    ),
    "idempotency key too long": (
        ingest_pb2.WriteRequest(series=[series()], idempotency_key="k" * 129),
        INVALID,
        "idempotency_key",
    ),
    "too many samples": (
        ingest_pb2.WriteRequest(series=[series(times_ms=[NOW] * 500_001, values=[1.0] * 500_001)]),
        EXHAUSTED,
        "series",
    ),
    "too many series": (
        ingest_pb2.WriteRequest(series=[series()] * 10_001),
        EXHAUSTED,
        "series",
    ),
    # Over max_request_bytes (16 MiB), under the transport's cap (17 MiB): the
    # field-level refusal, not gRPC's.
    "request too large": (
        ingest_pb2.WriteRequest(
            series=[series(labels={f"l{i:02d}": "v" * 250 for i in range(16)})] * 4_100
        ),
        EXHAUSTED,
        "series",
    ),
}


@pytest.mark.parametrize("case", list(WRITE_CASES))
def test_write_rejected_with_field(stubs: Stubs, case: str) -> None:
    request, code, field = WRITE_CASES[case]
    with pytest.raises(grpc.RpcError) as caught:
        stubs.ingest.Write(request, timeout=30)
    assert caught.value.code() == code  # type: ignore[attr-defined]
    assert field in violations(caught.value)
    assert field in caught.value.details()  # type: ignore[attr-defined]


def _query(**overrides: Any) -> query_pb2.QueryRangeRequest:
    fields: dict[str, Any] = {
        "app": "shop",
        "metric": "router.latency_ms",
        "start_ms": NOW - 60 * MINUTE,
        "end_ms": NOW,
        "step_ms": MINUTE,
        "stats": ["count", "p99"],
    }
    fields.update(overrides)
    return query_pb2.QueryRangeRequest(**fields)


QUERY_CASES: dict[str, tuple[query_pb2.QueryRangeRequest, str]] = {
    "unknown stat": (_query(stats=["count", "p42"]), "stats[1]"),
    "quantile above 1": (_query(stats=["q1.5"]), "stats[0]"),
    "step not whole minutes": (_query(step_ms=90_000), "step_ms"),
    "negative step": (_query(step_ms=-MINUTE), "step_ms"),
    "too many steps": (_query(start_ms=NOW - 30 * DAY, step_ms=MINUTE), "step_ms"),
    "end before start": (_query(end_ms=NOW - 61 * MINUTE), "end_ms"),
    "empty range": (_query(end_ms=NOW - 60 * MINUTE), "end_ms"),
    "negative start": (_query(start_ms=-1), "start_ms"),
    "app missing": (_query(app=""), "app"),
    "metric charset": (_query(metric="a b"), "metric"),
    "matcher name": (_query(matchers={"bad name": "x"}), 'matchers["bad name"]'),
    "group_by name": (_query(group_by=["ok", "not ok"]), "group_by[1]"),
    "group_by repeated": (_query(group_by=["dyno", "dyno"]), "group_by[1]"),
    "too many stats": (_query(stats=["count"] * 33), "stats"),
    "2,000 stats": (_query(stats=["p99"] * 2_000), "stats"),
    "stat with a trailing newline": (_query(stats=["count", "q0.5\n"]), "stats[1]"),
    "app with a trailing newline": (_query(app="shop\n"), "app"),
    "metric with a trailing newline": (_query(metric="router.latency_ms\n"), "metric"),
    "group_by with a trailing newline": (_query(group_by=["dyno\n"]), "group_by[0]"),
}


@pytest.mark.parametrize("case", list(QUERY_CASES))
def test_query_rejected_with_field(stubs: Stubs, case: str) -> None:
    request, field = QUERY_CASES[case]
    with pytest.raises(grpc.RpcError) as caught:
        stubs.query.QueryRange(request, timeout=10)
    assert caught.value.code() == INVALID  # type: ignore[attr-defined]
    assert field in violations(caught.value)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (query_pb2.ListSeriesRequest(app="", start_ms=0, end_ms=NOW), "app"),
        (query_pb2.ListSeriesRequest(app="shop", start_ms=NOW, end_ms=NOW - 1), "end_ms"),
        (query_pb2.ListSeriesRequest(app="shop", metric="x y", start_ms=0, end_ms=NOW), "metric"),
    ],
)
def test_list_series_rejected_with_field(
    stubs: Stubs, request_: query_pb2.ListSeriesRequest, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stubs.query.ListSeries(request_, timeout=10)
    assert caught.value.code() == INVALID  # type: ignore[attr-defined]
    assert field in violations(caught.value)


def test_message_beyond_transport_limit_is_refused(stubs: Stubs) -> None:
    huge = ingest_pb2.WriteRequest(
        series=[series(times_ms=[NOW] * 4_800_000, values=[1.0] * 4_800_000)]
    )
    assert huge.ByteSize() > 64 * 1024 * 1024
    with pytest.raises(grpc.RpcError) as caught:
        stubs.ingest.Write(huge, timeout=60)
    assert caught.value.code() == EXHAUSTED  # type: ignore[attr-defined]


def test_invalid_request_is_not_half_applied(stubs: Stubs) -> None:
    """A valid series beside an invalid one is not stored; the stream stops at
    its invalid message, naming it, after applying the ones before."""
    good = series(app="half", times_ms=[NOW - MINUTE], values=[5.0])
    with pytest.raises(grpc.RpcError) as caught:
        stubs.ingest.Write(
            ingest_pb2.WriteRequest(series=[good, series(app="half", values=[math.nan, 1.0])]),
            timeout=10,
        )
    assert violations(caught.value) == ["series[1].values[0]"]

    stream = iter(
        [
            ingest_pb2.WriteRequest(series=[series(app="stream", times_ms=[NOW], values=[1.0])]),
            ingest_pb2.WriteRequest(series=[series(app="stream", values=[1.0])]),
        ]
    )
    with pytest.raises(grpc.RpcError) as caught:
        stubs.ingest.WriteStream(stream, timeout=10)
    assert caught.value.code() == INVALID  # type: ignore[attr-defined]
    assert violations(caught.value) == ["[1].series[0].values"]

    with Client(stubs.target) as client:
        control = client.write([Series("half", "control", [NOW - MINUTE], [1.0])])
        assert control == 1

        def control_visible() -> None:
            result = client.query_range(
                "half", "control", NOW - 2 * MINUTE, NOW + MINUTE, stats=["count"]
            )
            assert result.series

        eventually(control_visible)  # flushes have run since the rejected writes
        result = client.query_range(
            "half", "router.latency_ms", NOW - 2 * MINUTE, NOW + MINUTE, stats=["count"]
        )
        assert result.series == ()
        streamed = client.query_range(
            "stream",
            "router.latency_ms",
            NOW - 2 * MINUTE,
            NOW + MINUTE,
            stats=["count"],
            step_ms=3 * MINUTE,
        )
        assert [s.stats["count"] for s in streamed.series] == [(1.0,)]


def test_values_at_the_largest_magnitude_sum_finitely(stubs: Stubs) -> None:
    """1e289 is the largest magnitude accepted: however many such values a
    bucket holds, their sum stays finite."""
    with Client(stubs.target) as client:
        times = [NOW - MINUTE] * 4
        assert client.write([Series("huge", "m", times, [1e289] * 4)]) == 4
        assert client.write([Series("huge", "m", times, [1e289] * 4)]) == 4

        def summed() -> float:
            result = client.query_range(
                "huge", "m", NOW - 2 * MINUTE, NOW + MINUTE, stats=["count", "sum", "p50"]
            )
            assert result.series
            assert result.series[0].stats["count"] == (8.0,)
            return float(result.series[0].stats["sum"][0])

        total = eventually(summed)
        assert math.isfinite(total)
        assert total == pytest.approx(8e289)
