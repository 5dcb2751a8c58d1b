"""A 24-hour backfill sent as fast as it is acknowledged: writes are pushed
back while storage catches up instead of memory growing with the time range,
and every acknowledged sample becomes queryable."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

from metaas.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc
from tests.support import ServerProcess

MINUTE = 60_000
HOUR = 3_600_000
HOURS = 24
SERIES = 150
PER_MINUTE = 8  # observations per series and minute
SERIES_PER_WRITE = 50  # one hour of them per write: 24,000 samples
WRITERS = 4
# Each minute's values are spread over the sketch's whole range, of both
# signs, so each aggregate is as large as one of a few values gets (two
# stores of 2,048 buckets, about 5 KiB with its objects): memory shows at a
# scale storage absorbs within the test. Before aggregates waiting for
# storage were bounded, this peaked near 1.1 GiB; bounded, near 0.7 GiB.
MEMORY_CEILING_MIB = 900
VISIBLE_WITHIN_S = 150.0


def _status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field}")


def _requests(first_ms: int) -> Iterator[ingest_pb2.WriteRequest]:
    """Oldest hour first, as a backfill walks its range."""
    rng = np.random.default_rng(12)
    offsets = np.linspace(0, MINUTE - 1, PER_MINUTE).astype(np.int64)
    for hour in range(HOURS):
        start = first_ms + hour * HOUR
        times = (start + np.arange(60)[:, None] * MINUTE + offsets).ravel().tolist()
        for first in range(0, SERIES, SERIES_PER_WRITE):
            request = ingest_pb2.WriteRequest(idempotency_key=uuid.uuid4().hex)
            for series in range(first, first + SERIES_PER_WRITE):
                magnitudes = 10.0 ** rng.uniform(-20, 20, len(times))
                request.series.add(
                    app="backfill",
                    metric="latency_ms",
                    labels={"series": str(series)},
                    times_ms=times,
                    values=(magnitudes * rng.choice([-1.0, 1.0], len(times))).tolist(),
                )
            yield request


async def _backfill(target: str, first_ms: int) -> tuple[int, int]:
    """Write every request as fast as each is acknowledged, retrying
    UNAVAILABLE after the server's hint; return (samples acknowledged,
    writes pushed back)."""
    requests = _requests(first_ms)
    acknowledged = pushed_back = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ingest_pb2_grpc.MetricsIngestStub(channel)

        async def writer() -> None:
            nonlocal acknowledged, pushed_back
            for request in requests:
                while True:
                    try:
                        reply = await stub.Write(request, timeout=60)
                    except grpc.aio.AioRpcError as error:
                        if error.code() != grpc.StatusCode.UNAVAILABLE:
                            raise
                        pushed_back += 1
                        hint = dict(error.trailing_metadata() or ()).get("grpc-retry-pushback-ms")
                        assert hint is not None, "UNAVAILABLE without a retry hint"
                        await asyncio.sleep(int(hint) / 1000)
                        continue
                    acknowledged += reply.accepted_samples
                    break

        await asyncio.gather(*(writer() for _ in range(WRITERS)))
    return acknowledged, pushed_back


def _count(stub: query_pb2_grpc.MetricsQueryStub, start_ms: int, end_ms: int, step_ms: int) -> int:
    reply = stub.QueryRange(
        query_pb2.QueryRangeRequest(
            app="backfill",
            metric="latency_ms",
            start_ms=start_ms,
            end_ms=end_ms,
            step_ms=step_ms,
            stats=["count"],
        ),
        timeout=60,
    )
    return int(sum(sum(series.stats[0].values) for series in reply.series))


def test_backfill_is_pushed_back_not_held_and_all_of_it_stored(
    tmp_path: Path, figures: dict[str, object]
) -> None:
    server = ServerProcess(tmp_path / "server").start()
    try:
        assert server.process is not None
        pid = server.process.pid
        now = time.time_ns() // 1_000_000
        first_ms = now - now % HOUR - HOURS * HOUR
        end_ms = first_ms + HOURS * HOUR
        began = time.monotonic()
        acknowledged, pushed_back = asyncio.run(_backfill(server.target, first_ms))
        assert acknowledged == HOURS * 60 * SERIES * PER_MINUTE
        with grpc.insecure_channel(server.target) as channel:
            stub = query_pb2_grpc.MetricsQueryStub(channel)
            deadline = time.monotonic() + VISIBLE_WITHIN_S
            while (counted := _count(stub, first_ms, end_ms, HOURS * HOUR)) < acknowledged:
                assert time.monotonic() < deadline, f"{counted} of {acknowledged} visible"
                time.sleep(1.0)
            assert counted == acknowledged  # hourly rollups: no sample twice
            # Minutes agree (a flush stores its rollups and minutes in chunks,
            # so the last minutes may follow the rollups by a moment).
            per_hour = 60 * SERIES * PER_MINUTE
            for hour in (first_ms, end_ms - HOUR):
                while (minutes := _count(stub, hour, hour + HOUR, MINUTE)) < per_hour:
                    assert time.monotonic() < deadline, f"{minutes} of {per_hour} in minutes"
                    time.sleep(0.2)
                assert minutes == per_hour
            visible_s = time.monotonic() - began
        peak = _status_mib(pid, "VmHWM")
        assert peak < MEMORY_CEILING_MIB
    finally:
        server.stop()
    figures.update(
        {
            "samples": acknowledged,
            "series x minutes": f"{SERIES} x {HOURS * 60}",
            "peak RSS (MiB)": round(peak),
            "seconds until fully queryable": round(visible_s, 1),
            "writes pushed back": pushed_back,
        }
    )
