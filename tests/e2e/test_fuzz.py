"""Hostile input through the real server: well-formed messages with hostile
values, and malformed bytes at the gRPC layer. Every answer is a proper
status, the server never crashes, and a control series reads back unchanged."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaas.client import Client, Series
from metaas.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc
from tests.conftest import FIGURES
from tests.support import ServerProcess, eventually

MINUTE = 60_000
NOW = time.time_ns() // 1_000_000
# Codes a hostile request may get; never UNKNOWN or INTERNAL (a server bug).
EXPECTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
COUNTS = {"write": 1500, "stream": 300, "query": 1500, "list": 700, "raw": 6000}
fuzzed = {"requests": 0}

text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["shop", "router.latency_ms", "dyno", "web.1", "", " ", "\x00", "é", "a" * 300]
    ),
)
times = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=NOW - 40 * 86_400_000, max_value=NOW + 10 * MINUTE),
)
values = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 1e308, 5e-324]
)
labels = st.dictionaries(text, text, max_size=20)
series = st.builds(
    lambda app, metric, lab, t, v: ingest_pb2.SeriesSamples(
        app=app, metric=metric, labels=lab, times_ms=t, values=v
    ),
    text.filter(lambda app: app != "control"),
    text,
    labels,
    st.lists(times, max_size=30),
    st.lists(values, max_size=30),
)
write_requests = st.builds(
    lambda s, key: ingest_pb2.WriteRequest(series=s, idempotency_key=key),
    st.lists(series, max_size=5),
    text,
)
query_requests = st.builds(
    lambda app, metric, m, start, end, step, stats, group: query_pb2.QueryRangeRequest(
        app=app,
        metric=metric,
        matchers=m,
        start_ms=start,
        end_ms=end,
        step_ms=step,
        stats=stats,
        group_by=group,
    ),
    text,
    text,
    labels,
    times,
    times,
    st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, 60_000, 300_000, 59_999])),
    st.lists(
        st.one_of(text, st.sampled_from(["p99", "q0.5", "q1.5", "q", "count", "p999"])), max_size=12
    ),
    st.lists(text, max_size=20),
)
list_requests = st.builds(
    lambda app, start, end, metric: query_pb2.ListSeriesRequest(
        app=app, start_ms=start, end_ms=end, metric=metric
    ),
    text,
    times,
    times,
    text,
)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = ServerProcess(Path(tmp_path_factory.mktemp("fuzz"))).start()
    control_start = NOW - NOW % MINUTE - 10 * MINUTE
    try:
        with Client(server.target) as client:
            client.write(
                [
                    Series(
                        "control",
                        "m",
                        [control_start + i * 1000 for i in range(300)],
                        [float(i) for i in range(300)],
                        {"k": "v"},
                    )
                ]
            )

            def control() -> object:
                result = client.query_range(
                    "control",
                    "m",
                    control_start,
                    control_start + 10 * MINUTE,
                    stats=["count", "sum", "p50", "max"],
                )
                assert result.series
                assert sum(result.series[0].stats["count"]) == 300
                return result

            before = eventually(control)
        yield server.target
        assert server.process is not None
        assert server.process.poll() is None, "the server crashed"
        with Client(server.target) as client:
            assert control() == before
        FIGURES["hostile input"] = {
            "requests fuzzed": fuzzed["requests"],
            "control series": "unchanged",
            "server": "alive",
        }
        assert fuzzed["requests"] >= 10_000
    finally:
        server.stop()


def _check(call: object) -> None:
    fuzzed["requests"] += 1
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        assert code in EXPECTED, (code, error.details())  # type: ignore[attr-defined]


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def test_fuzz_write(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = ingest_pb2_grpc.MetricsIngestStub(channel)

        @fuzz(COUNTS["write"])
        @given(write_requests)
        def run(request: ingest_pb2.WriteRequest) -> None:
            _check(lambda: stub.Write(request, timeout=10))

        run()


def test_fuzz_write_stream(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = ingest_pb2_grpc.MetricsIngestStub(channel)

        @fuzz(COUNTS["stream"])
        @given(st.lists(write_requests, max_size=4))
        def run(requests: list[ingest_pb2.WriteRequest]) -> None:
            _check(lambda: stub.WriteStream(iter(requests), timeout=10))

        run()


def test_fuzz_queries(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = query_pb2_grpc.MetricsQueryStub(channel)

        @fuzz(COUNTS["query"])
        @given(query_requests)
        def run_query(request: query_pb2.QueryRangeRequest) -> None:
            _check(lambda: stub.QueryRange(request, timeout=10))

        @fuzz(COUNTS["list"])
        @given(list_requests)
        def run_list(request: query_pb2.ListSeriesRequest) -> None:
            _check(lambda: stub.ListSeries(request, timeout=10))

        run_query()
        run_list()


@pytest.mark.parametrize(
    "method",
    [
        "/metaas.v1.MetricsIngest/Write",
        "/metaas.v1.MetricsQuery/QueryRange",
        "/metaas.v1.MetricsQuery/ListSeries",
    ],
)
def test_fuzz_malformed_bytes(target: str, method: str) -> None:
    """Bytes that are not (or not quite) the request message."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        valid = ingest_pb2.WriteRequest(
            series=[ingest_pb2.SeriesSamples(app="x", metric="m", times_ms=[NOW], values=[1.0])]
        ).SerializeToString()

        @fuzz(COUNTS["raw"] // 3)
        @given(
            st.one_of(
                st.binary(max_size=300),
                st.builds(lambda cut: valid[:cut], st.integers(0, len(valid))),
                st.builds(
                    lambda i, b: valid[:i] + bytes([b]) + valid[i + 1 :],
                    st.integers(0, len(valid) - 1),
                    st.integers(0, 255),
                ),
            )
        )
        def run(payload: bytes) -> None:
            fuzzed["requests"] += 1
            try:
                call(payload, timeout=10)
            except grpc.RpcError as error:
                code = error.code()  # type: ignore[attr-defined]
                assert code in EXPECTED, (code, error.details())  # type: ignore[attr-defined]

        run()
