"""A burst far beyond capacity: refused with RESOURCE_EXHAUSTED and a retry
hint, memory stays bounded, and the service recovers by itself."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc

from metaas.client import Client, Series
from metaas.v1 import ingest_pb2, ingest_pb2_grpc
from tests.support import ServerProcess

MINUTE = 60_000
BURST = 400
SAMPLES = 20_000
# Writes the server may run at once. A write is in flight from its handler's
# start to its acknowledgement (after the log's group commit); on a fast disk
# a burst from one channel keeps about 10-20 in flight, so the limit is set
# well below that for the burst to be far beyond it.
INFLIGHT = 4
MEMORY_BOUND_MIB = 1024


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def _burst(target: str) -> list[grpc.StatusCode]:
    now = time.time_ns() // 1_000_000
    request = ingest_pb2.WriteRequest(
        series=[
            ingest_pb2.SeriesSamples(
                app="burst", metric="m", times_ms=[now - MINUTE] * SAMPLES, values=[1.0] * SAMPLES
            )
        ]
    )
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ingest_pb2_grpc.MetricsIngestStub(channel)
        results = await asyncio.gather(
            *(stub.Write(request, timeout=60) for _ in range(BURST)), return_exceptions=True
        )
    return [
        r.code() if isinstance(r, grpc.aio.AioRpcError) else grpc.StatusCode.OK for r in results
    ]


def test_burst_is_refused_bounded_and_recovers(tmp_path: Path, figures: dict[str, object]) -> None:
    limit = ("--max-inflight-requests", str(INFLIGHT))
    server = ServerProcess(tmp_path / "server", extra=limit).start()
    try:
        assert server.process is not None
        codes = asyncio.run(_burst(server.target))
        refused = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
        accepted = codes.count(grpc.StatusCode.OK)
        assert refused > 0
        assert accepted > 0
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        peak = _peak_rss_mib(server.process.pid)
        assert peak < MEMORY_BOUND_MIB
        with Client(server.target) as client:  # recovered, with no restart
            now = time.time_ns() // 1_000_000
            assert client.write([Series("burst", "m", [now], [1.0])]) == 1
    finally:
        server.stop()
    figures.update(
        {
            "faults injected": (
                f"burst of {BURST} writes x {SAMPLES} samples, {INFLIGHT} in flight allowed"
            ),
            "refused (RESOURCE_EXHAUSTED)": refused,
            "samples acknowledged": accepted * SAMPLES,
            "peak RSS (MiB)": round(peak),
        }
    )
