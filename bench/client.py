"""Setup and checks through the real API: writing data sets, waiting until
they are queryable, and taking a query's serialized answer."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import json_format

from bench.data import Written
from metaas.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    migration_pb2,
    migration_pb2_grpc,
    query_pb2,
)

QUERY_RANGE = "/metaas.v1.MetricsQuery/QueryRange"
_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


def write_all(target: str, requests: list[ingest_pb2.WriteRequest], timeout_s: float = 120) -> int:
    with grpc.insecure_channel(target, options=_OPTIONS) as channel:
        stub = ingest_pb2_grpc.MetricsIngestStub(channel)
        return sum(stub.Write(r, timeout=timeout_s).accepted_samples for r in requests)


def write_paced(
    target: str,
    requests: Iterable[ingest_pb2.WriteRequest],
    *,
    timeout_s: float = 120,
    patience_s: float = 600,
) -> tuple[int, float]:
    """Write ``requests`` one after another; return the samples accepted and
    the seconds spent waiting. A request refused with UNAVAILABLE (storage
    is behind: nothing was applied) is sent again after a pause."""
    accepted, waited = 0, 0.0
    with grpc.insecure_channel(target, options=_OPTIONS) as channel:
        stub = ingest_pb2_grpc.MetricsIngestStub(channel)
        for request in requests:
            while True:
                try:
                    accepted += stub.Write(request, timeout=timeout_s).accepted_samples
                    break
                except grpc.RpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE or waited > patience_s:
                        raise
                    time.sleep(1.0)
                    waited += 1.0
    return accepted, waited


def query_bytes(target: str, query: dict[str, Any], timeout_s: float = 60) -> bytes:
    """The serialized ``QueryRangeResponse`` the server sends for ``query``."""
    request = json_format.ParseDict(query, query_pb2.QueryRangeRequest())
    with grpc.insecure_channel(target, options=_OPTIONS) as channel:
        call = channel.unary_unary(QUERY_RANGE)  # bytes in, bytes out
        reply: bytes = call(request.SerializeToString(), timeout=timeout_s)
        return reply


def counted(target: str, query: dict[str, Any]) -> tuple[int, int]:
    """Samples counted by ``query`` and buckets returned."""
    response = query_pb2.QueryRangeResponse.FromString(
        query_bytes(target, {**query, "stats": ["count"]})
    )
    samples = sum(int(sum(s.stats[0].values)) for s in response.series)
    return samples, sum(len(s.times_ms) for s in response.series)


def wait_visible(
    target: str, written: Written, timeout_s: float = 300, interval_s: float = 0.5
) -> float:
    """Seconds until every written sample is counted by the query."""
    started = time.monotonic()
    while True:
        samples, _ = counted(target, written.query)
        if samples == written.samples:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{samples} of {written.samples} samples visible after {timeout_s}s")
        time.sleep(interval_s)


def wait_stored(target: str, written: Written, settle_s: float, timeout_s: float = 600) -> float:
    """Seconds until a large data set is stored: first until the server's
    write lag is zero (a cheap status call; the settle time lets the next
    flush seal the writes), then until the query counts every sample. Polling
    the big query itself would take the CPU the flush needs."""
    started = time.monotonic()
    time.sleep(settle_s)
    while any(b.write_lag_seconds > 0 for b in migration_status(target, "").backends):
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"write lag still above zero after {timeout_s}s")
        time.sleep(0.5)
    remaining = max(1.0, timeout_s - (time.monotonic() - started))
    wait_visible(target, written, timeout_s=remaining, interval_s=2.0)
    return time.monotonic() - started


def migration_status(target: str, app: str) -> migration_pb2.GetMigrationStatusResponse:
    with grpc.insecure_channel(target) as channel:
        stub = migration_pb2_grpc.MigrationAdminStub(channel)
        return stub.GetMigrationStatus(migration_pb2.GetMigrationStatusRequest(app=app), timeout=10)
