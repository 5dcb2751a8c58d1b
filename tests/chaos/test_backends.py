"""Backend faults through a TCP proxy in front of real Cassandra and the
DynamoDB emulator: outages during dual writes, and a slow backend."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from metaas.client import Client, MetaasError, Series
from tests.backends import dynamodb
from tests.faults import FaultProxy
from tests.migration.support import write_flags
from tests.support import ServerProcess, eventually

MINUTE = 60_000
# make test uses a short outage; make chaos sets the full minute.
OUTAGE_S = float(os.environ.get("METAAS_CHAOS_OUTAGE_S", "8"))
AWS = {"AWS_ACCESS_KEY_ID": "metaas-test", "AWS_SECRET_ACCESS_KEY": "metaas-test"}


@pytest.fixture
def proxies() -> Iterator[dict[str, FaultProxy]]:
    made = {"old": FaultProxy("127.0.0.1", 9042), "new": FaultProxy("127.0.0.1", 8000)}
    yield made
    for proxy in made.values():
        proxy.close()


def _dual_write_server(tmp_path: Path, proxies: dict[str, FaultProxy]) -> ServerProcess:
    dynamodb.use_test_credentials()
    table = asyncio.run(dynamodb.new_table("chaos")).split("?")[0].removeprefix("dynamodb://")
    old_url = f"cassandra://{proxies['old'].address}/chaos_{uuid.uuid4().hex[:8]}?read_timeout_ms=2000&write_timeout_ms=2000&connect_timeout_ms=1000"
    new_url = f"dynamodb://{table}?endpoint=http://{proxies['new'].address}&region=us-east-1&connect_timeout_s=1&read_timeout_s=2"
    flags = tmp_path / "flags.json"
    write_flags(flags, {"chaos": "dualwrite"})
    return ServerProcess(
        tmp_path / "server",
        storage=old_url,
        flush_interval_s=0.3,
        extra=("--migration-target", new_url, "--flags", str(flags)),
        env=AWS,
    ).start()


@pytest.mark.parametrize("down", ["new", "old"])
def test_outage_during_dual_writes_loses_nothing(
    tmp_path: Path, proxies: dict[str, FaultProxy], down: str, figures: dict[str, object]
) -> None:
    server = _dual_write_server(tmp_path, proxies)
    start_minute = time.time_ns() // 1_000_000 // MINUTE * MINUTE - 4 * MINUTE
    acked = 0
    failures: list[str] = []
    stop = threading.Event()

    def ingest() -> None:
        nonlocal acked
        with Client(server.target, timeout=10) as client:
            i = 0
            while not stop.is_set():
                times = [start_minute + (i * 7919 + k * 911) % (3 * MINUTE) for k in range(200)]
                try:
                    acked += client.write(
                        [
                            Series(
                                "chaos",
                                "m",
                                times,
                                [float(k) for k in range(200)],
                                {"dyno": f"web.{i % 3}"},
                            )
                        ]
                    )
                except MetaasError as error:
                    failures.append(str(error))
                i += 1
                time.sleep(0.05)

    try:
        writer = threading.Thread(target=ingest)
        writer.start()
        time.sleep(2)
        proxies[down].outage()
        time.sleep(OUTAGE_S)
        proxies[down].heal()
        time.sleep(2)
        stop.set()
        writer.join(30)
        assert failures == []  # ingest never failed

        with Client(server.target, timeout=60) as client:

            def caught_up() -> None:
                lag = {b.role: b.write_lag_seconds for b in client.migration_status().backends}
                assert lag.get("old", 0) == 0
                assert lag.get("new", 0) == 0
                result = client.query_range(
                    "chaos",
                    "m",
                    start_minute,
                    start_minute + 4 * MINUTE,
                    step_ms=4 * MINUTE,
                    stats=["count"],
                )
                assert result.series
                assert sum(result.series[0].stats["count"]) == acked

            eventually(caught_up, timeout=90, interval=0.5)
            (report,) = [
                p
                for p in client.verify_range(
                    "chaos", start_minute - MINUTE, start_minute + 5 * MINUTE
                )
                if p.done
            ]
            assert report.partials_mismatched == 0, list(report.samples)
            assert report.partials_compared > 0
    finally:
        stop.set()
        server.stop()
    figures.update(
        {
            "faults injected": f"{down} backend outage {OUTAGE_S:.0f} s",
            "samples acknowledged": acked,
            "samples recovered": acked,
            "partials verified identical": report.partials_compared,
        }
    )


def test_slow_backend_fails_fast_on_deadline(
    tmp_path: Path, proxies: dict[str, FaultProxy], figures: dict[str, object]
) -> None:
    server = ServerProcess(
        tmp_path / "server",
        storage=f"cassandra://{proxies['old'].address}/slow_{uuid.uuid4().hex[:8]}",
    ).start()
    try:
        now = time.time_ns() // 1_000_000
        with Client(server.target) as client:
            client.write([Series("slow", "m", [now - MINUTE], [1.0])])
            eventually(lambda: _visible(client, now))
            proxies["old"].add_latency(0.5)
            durations = []
            for _ in range(5):
                started = time.perf_counter()
                with pytest.raises(MetaasError) as caught:
                    client.query_range("slow", "m", now - 10 * MINUTE, now + MINUTE, timeout=0.2)
                durations.append(time.perf_counter() - started)
                assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert max(durations) < 0.4
            with grpc.insecure_channel(server.target) as channel:
                health = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                assert health.status == health_pb2.HealthCheckResponse.SERVING
            proxies["old"].heal()
            assert client.query_range("slow", "m", now - 10 * MINUTE, now + MINUTE).series
    finally:
        server.stop()
    figures.update(
        {
            "faults injected": "500 ms latency on the authoritative backend",
            "slowest 200 ms-deadline query (ms)": round(max(durations) * 1000, 1),
        }
    )


def _visible(client: Client, now: int) -> None:
    assert client.query_range("slow", "m", now - 10 * MINUTE, now + MINUTE).series
