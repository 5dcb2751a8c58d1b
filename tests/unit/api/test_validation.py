"""Validation rules that need no server: names matched whole, the bounds on
stats and on an answer's size, and the largest magnitude a value may have."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from metaas.server.api.errors import RequestError
from metaas.server.api.validation import MAX_ABS_VALUE, validate_query, validate_write
from metaas.server.config import LimitsConfig
from metaas.server.sketch import Distribution
from metaas.v1 import ingest_pb2, query_pb2
from tests.conformance.conftest import RETENTION_MS

MINUTE = 60_000
NOW = 1_800_000_000_000
LIMITS = LimitsConfig()


def write(**overrides: Any) -> ingest_pb2.WriteRequest:
    fields: dict[str, Any] = {
        "app": "shop",
        "metric": "router.latency_ms",
        "labels": {"dyno": "web.1"},
        "times_ms": [NOW - MINUTE, NOW],
        "values": [1.0, 2.0],
    }
    fields.update(overrides)
    return ingest_pb2.WriteRequest(series=[ingest_pb2.SeriesSamples(**fields)])


def query(**overrides: Any) -> query_pb2.QueryRangeRequest:
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


def refusal(call: Any, *args: Any, **kwargs: Any) -> RequestError:
    with pytest.raises(RequestError) as caught:
        call(*args, **kwargs)
    return caught.value


def write_refusal(request: ingest_pb2.WriteRequest) -> RequestError:
    return refusal(validate_write, request, now_ms=NOW, retention_ms=RETENTION_MS, limits=LIMITS)


def fields(error: RequestError) -> list[str]:
    return [field for field, _ in error.violations]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (write(app="shop\n"), "series[0].app"),
        (write(metric="router.latency_ms\n"), "series[0].metric"),
        (write(labels={"dyno\n": "web.1"}), 'series[0].labels["dyno\n"]'),
        (write(labels={"dyno": "web.1\n"}), 'series[0].labels["dyno"]'),
    ],
    ids=["app", "metric", "label name", "label value"],
)
def test_a_trailing_newline_is_refused_in_writes(
    request_: ingest_pb2.WriteRequest, field: str
) -> None:
    error = write_refusal(request_)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields(error) == [field]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (query(app="shop\n"), "app"),
        (query(metric="router.latency_ms\n"), "metric"),
        (query(matchers={"dyno\n": "web.1"}), 'matchers["dyno\n"]'),
        (query(matchers={"dyno": "web.1\n"}), 'matchers["dyno"]'),
        (query(group_by=["dyno\n"]), "group_by[0]"),
        (query(stats=["count", "q0.5\n"]), "stats[1]"),
        (query(stats=["p99\n"]), "stats[0]"),
        # \d would take any Unicode digit, and float() reads them as digits.
        (query(stats=["q0.\u0665"]), "stats[0]"),
    ],
    ids=["app", "metric", "matcher name", "matcher value", "group_by", "q", "p99", "q unicode"],
)
def test_a_trailing_newline_is_refused_in_queries(
    request_: query_pb2.QueryRangeRequest, field: str
) -> None:
    error = refusal(validate_query, request_, limits=LIMITS)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields(error) == [field]


def test_names_without_the_newline_are_accepted() -> None:
    validate_write(write(), now_ms=NOW, retention_ms=RETENTION_MS, limits=LIMITS)
    parsed = validate_query(
        query(matchers={"dyno": "web.1"}, group_by=["status"], stats=["q0.5", "q1", "q.25"]),
        limits=LIMITS,
    )
    assert [s.quantile for s in parsed.stats] == [0.5, 1.0, 0.25]


def test_more_stats_than_the_bound_are_refused_before_parsing() -> None:
    at_bound = validate_query(query(stats=["p99"] * LIMITS.max_stats), limits=LIMITS)
    assert len(at_bound.stats) == LIMITS.max_stats
    # 2,000 names, none of them valid: one violation, on the list itself.
    error = refusal(validate_query, query(stats=["nope"] * 2_000), limits=LIMITS)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields(error) == ["stats"]
    assert f"at most {LIMITS.max_stats}" in error.message


def test_steps_times_stats_over_the_answer_bound_are_refused_unread() -> None:
    limits = LimitsConfig(max_result_values=1_000)
    # 60 steps x 16 stats = 960 values per group: accepted, with the bound.
    accepted = validate_query(query(stats=["count"] * 16), limits=limits)
    assert accepted.max_values == 1_000
    # 60 steps x 17 stats = 1,020 values even for a single group.
    error = refusal(validate_query, query(stats=["count"] * 17), limits=limits)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert fields(error) == ["step_ms", "stats"]
    assert "1,020 values" in error.message
    assert "use a larger step_ms" in error.message


def test_every_query_carries_the_answer_bound() -> None:
    assert validate_query(query(), limits=LIMITS).max_values == LIMITS.max_result_values


def test_values_beyond_the_largest_magnitude_are_refused() -> None:
    error = write_refusal(write(values=[1e308, 1e308]))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields(error) == ["series[0].values[0]", "series[0].values[1]"]
    assert "exceeds 1e+289" in error.message
    error = write_refusal(write(values=[1.0, -2e289]))
    assert fields(error) == ["series[0].values[1]"]
    # Non-finite values keep their own description.
    error = write_refusal(write(values=[float("nan"), 1e300]))
    assert [d for _, d in error.violations] == [
        "must be a finite number, not nan",
        "1e+300 exceeds 1e+289 in magnitude",
    ]


def test_values_at_the_largest_magnitude_sum_finitely() -> None:
    batches, accepted = validate_write(
        write(values=[MAX_ABS_VALUE, MAX_ABS_VALUE]),
        now_ms=NOW,
        retention_ms=RETENTION_MS,
        limits=LIMITS,
    )
    assert accepted == 2
    values = batches[0].values
    assert values.tolist() == [1e289, 1e289]
    one = Distribution.from_values(values)
    assert np.isfinite(one.sum)
    # The bound's argument: as many values as an int64 count can hold, each
    # of the largest magnitude, still sum below the largest double.
    assert np.isfinite(np.float64(MAX_ABS_VALUE) * np.float64(2**63))
    # Merging many such sums (what a long query's bucket does) stays finite.
    merged = Distribution.merged([one] * 1_000)
    assert merged.count == 2_000
    assert np.isfinite(merged.sum)
    assert merged.sum == pytest.approx(2_000 * MAX_ABS_VALUE)
