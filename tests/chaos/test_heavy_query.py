"""Heavy queries beside health checks: the checks stay fast while four
whole-app queries compute, a query whose caller's deadline passes (or whose
caller cancels) stops using the CPU, and an answer over the size bound is
refused instead of computed."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from metaas.server.config import RetentionConfig
from metaas.server.model import Partial, SeriesKey
from metaas.server.sketch.distribution import by_bucket
from metaas.server.storage import StorageContext, open_storage
from metaas.v1 import query_pb2, query_pb2_grpc
from tests.support import ServerProcess

MINUTE = 60_000
SERIES = 2_000
MINUTES = 60
STATS = [
    "count",
    "sum",
    "min",
    "max",
    "mean",
    "p50",
    "p90",
    "p95",
    "p99",
    "p999",
    *(f"q0.{k:02d}" for k in range(1, 23)),
]
# Measured on a 2-core machine: a health check took at most 44 ms while four
# heavy queries ran, 3.7-4.9 s when a query held the event loop from its read
# to its answer. The target is 100 ms; the bound leaves headroom for a
# machine shared with other work.
HEALTH_MAX_MS = 250
# CPU the server may use in the second after an abandoned query's deadline
# (its flush loop and the health checks use a little).
IDLE_CPU_S = 0.15


def _prefill(db: Path) -> int:
    """SERIES series (5 statuses) of MINUTES minutes, written straight to the
    SQLite file the server then opens; returns the first minute."""

    async def write() -> int:
        now = time.time_ns() // 1_000_000
        start = now - now % MINUTE - MINUTES * MINUTE
        times = np.repeat(np.arange(MINUTES, dtype=np.int64) * MINUTE + start + 1_000, 2)
        rng = np.random.default_rng(3)
        values = [rng.lognormal(3.0, 1.0, times.size) for _ in range(SERIES)]
        keys = [
            SeriesKey.of("big", "latency", {"dyno": f"web.{s}", "status": f"{s % 5}xx"})
            for s in range(SERIES)
        ]
        partials = [
            Partial(keys[part], minute, "prefill", 1, distribution)
            for part, minute, distribution in by_bucket([times] * SERIES, values, MINUTE)
        ]
        storage = await open_storage(
            f"sqlite:///{db}", StorageContext(RetentionConfig().retention_ms)
        )
        try:
            await storage.write_partials(partials)
        finally:
            await storage.close()
        return start

    db.parent.mkdir(parents=True, exist_ok=True)
    return asyncio.run(write())


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _fields(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields a google.rpc.BadRequest in the error names."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            found: list[str] = []
            for detail in status_pb2.Status.FromString(value).details:
                bad = error_details_pb2.BadRequest()
                assert detail.Unpack(bad)
                found.extend(v.field for v in bad.field_violations)
            return found
    return []


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def _cpu_after(pid: int, stop_at: float) -> float:
    """CPU the server uses in the second from 0.3 s after ``stop_at`` (a
    perf_counter time: the deadline, or the cancellation)."""
    await asyncio.sleep(max(0.0, stop_at + 0.3 - time.perf_counter()))
    before = _cpu_s(pid)
    await asyncio.sleep(1.0)
    return _cpu_s(pid) - before


async def _scenario(target: str, pid: int, start: int, figures: dict[str, object]) -> None:
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        query = query_pb2_grpc.MetricsQueryStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        heavy = query_pb2.QueryRangeRequest(
            app="big",
            metric="latency",
            start_ms=start,
            end_ms=start + MINUTES * MINUTE,
            step_ms=MINUTE,
            stats=STATS,
        )

        started = time.perf_counter()
        first = await query.QueryRange(heavy, timeout=120)
        figures["one heavy query alone (s)"] = round(time.perf_counter() - started, 2)
        assert [v.values[0] for v in first.series[0].stats[:1]] == [2 * SERIES]

        latencies: list[float] = []
        polling = True

        async def poll() -> None:
            while polling:
                began = time.perf_counter()
                await health.Check(health_pb2.HealthCheckRequest(), timeout=30)
                latencies.append(time.perf_counter() - began)
                await asyncio.sleep(0.02)

        async def timed(deadline_s: float) -> tuple[grpc.StatusCode, float]:
            began = time.perf_counter()
            try:
                await query.QueryRange(heavy, timeout=deadline_s)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
            return code, round(time.perf_counter() - began, 2)

        poller = asyncio.create_task(poll())
        await asyncio.sleep(0.5)
        idle = list(latencies)
        outcomes = await asyncio.gather(timed(120), timed(120), timed(0.5), timed(0.5))
        polling = False
        await poller
        busy = latencies[len(idle) :]
        codes = [code for code, _ in outcomes]
        assert codes == [grpc.StatusCode.OK] * 2 + [grpc.StatusCode.DEADLINE_EXCEEDED] * 2
        figures.update(
            {
                "heavy queries (s)": [duration for _, duration in outcomes],
                "health checks during them": len(busy),
                "health p50/p99/max (ms)": (
                    _ms(statistics.median(busy)),
                    _ms(sorted(busy)[int(len(busy) * 0.99)]),
                    _ms(max(busy)),
                ),
                "health max when idle (ms)": _ms(max(idle)),
            }
        )
        assert max(busy) * 1000 < HEALTH_MAX_MS

        # Past the deadline, the query stops: no more pieces read or merged.
        deadline = time.perf_counter() + 0.5
        call = query.QueryRange(heavy, timeout=0.5)
        assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        cpu = await _cpu_after(pid, deadline)
        figures["server CPU in the second after a deadline (s)"] = round(cpu, 2)
        assert cpu < IDLE_CPU_S

        # The same when the caller cancels the call.
        call = query.QueryRange(heavy, timeout=120)
        await asyncio.sleep(0.5)
        call.cancel()
        assert await call.code() == grpc.StatusCode.CANCELLED
        cpu = await _cpu_after(pid, time.perf_counter())
        figures["server CPU in the second after a cancel (s)"] = round(cpu, 2)
        assert cpu < IDLE_CPU_S

        # 2,000 groups x 60 buckets x 32 stats: over max_result_values.
        began = time.perf_counter()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await query.QueryRange(
                query_pb2.QueryRangeRequest(
                    app="big",
                    metric="latency",
                    start_ms=start,
                    end_ms=start + MINUTES * MINUTE,
                    step_ms=MINUTE,
                    stats=STATS,
                    group_by=["dyno"],
                ),
                timeout=120,
            )
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _fields(caught.value) == ["matchers", "group_by", "step_ms", "stats"]
        assert "narrow matchers" in (caught.value.details() or "")
        figures["too large an answer refused after (s)"] = round(time.perf_counter() - began, 2)


def test_heavy_queries_keep_health_fast_and_stop_with_their_caller(
    tmp_path: Path, figures: dict[str, object]
) -> None:
    data = tmp_path / "server"
    start = _prefill(data / "metaas.db")
    # The data is stored as series only (as before views existed), and the
    # views start after it: every query here merges all series, as one
    # grouped or matched by labels the views do not project does.
    views_from = str(time.time_ns() // 1_000_000 + 86_400_000)
    server = ServerProcess(data, extra=("--views-from", views_from)).start()
    try:
        assert server.process is not None
        pid = server.process.pid
        asyncio.run(_scenario(server.target, pid, start, figures))
        figures["peak server RSS (MiB)"] = round(_peak_rss_mib(pid))
        assert server.process.poll() is None
    finally:
        server.stop()
    figures["data"] = f"{SERIES} series x {MINUTES} minutes; {len(STATS)} stats per query"
