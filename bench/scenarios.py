"""The scenarios of issue 8. Each takes a running server (or starts its own),
puts its data in through the API, runs the load and returns its figures."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import data
from bench._process import ROOT, Child, baseline_server, metaas_server
from bench.client import (
    counted,
    migration_status,
    query_bytes,
    wait_stored,
    wait_visible,
    write_all,
)
from bench.ghz import ghz
from bench.loadgen import write_requests
from bench.profile import Profiler

FLUSH_INTERVAL_S = 2.0


@dataclass(frozen=True, slots=True)
class Settings:
    duration_s: float  # of each measured load
    work: Path  # servers' data and logs, removed afterwards
    run_id: str  # makes app names unique, so runs never share data
    concurrency: int = 32  # ghz workers for the throughput runs
    rate: int = 200  # queries/s of the fixed-load runs
    ingest_senders: int = 16
    profiler: Profiler | None = None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ingest_load(settings: Settings, server: Child, requests_file: Path) -> dict[str, Any]:
    """Replay ``requests_file`` against ``server`` from the load process."""
    args = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--target",
        server.target,
        "--requests",
        str(requests_file),
        "--concurrency",
        str(settings.ingest_senders),
        "--duration",
        str(settings.duration_s),
        "--server-pid",
        str(server.pid),
    ]
    run = subprocess.run(args, cwd=ROOT, capture_output=True, check=False, timeout=600)
    if run.returncode != 0:
        raise RuntimeError(f"load generator failed: {run.stderr.decode(errors='replace')}")
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def ingest(
    settings: Settings, server: Child, backend: str, *, series: int = 100
) -> tuple[dict[str, Any], Path]:
    """Samples/s acknowledged through ``Write``: 10,000-sample requests
    (``series`` series of equal length) stamped within the last minute."""
    requests = data.ingest_requests(f"bench-ingest-{settings.run_id}", now_ms(), series=series)
    path = settings.work / f"ingest-{backend}-{series}.bin"
    write_requests(path, requests)
    result = ingest_load(settings, server, path)
    result["request_bytes"] = sum(len(r) for r in requests) // len(requests)
    result["shape"] = (
        f"{series} series x {10_000 // series} samples per request, "
        f"{len(requests)} distinct requests replayed"
    )
    if settings.profiler is not None:
        result["profile"] = settings.profiler.during(
            f"ingest-{backend}", server, lambda: ingest_load(settings, server, path)
        )
    return result, path


def ingest_baseline(settings: Settings, requests_file: Path) -> dict[str, Any]:
    """The same request bytes against a server that only parses them."""
    with baseline_server("ingest", settings.work) as server:
        return ingest_load(settings, server, requests_file)


def query(settings: Settings, server: Child, backend: str) -> dict[str, Any]:
    """QueryRange for one series over one hour at a 1-minute step: QPS and
    latency at fixed concurrency, and latency at a fixed rate."""
    written = data.one_hour(f"bench-query-{backend}-{settings.run_id}", now_ms())
    write_all(server.target, written.requests)
    visible_s = wait_visible(server.target, written)
    response = query_bytes(server.target, written.query)
    response_file = settings.work / f"query-response-{backend}.bin"
    response_file.write_bytes(response)
    _, points = counted(server.target, written.query)
    ghz(server.target, written.query, concurrency=4, count=200)  # warm-up, not measured
    result: dict[str, Any] = {
        "query": written.query,
        "points": points,
        "response_bytes": len(response),
        "visible_after_s": round(visible_s, 2),
        "closed": ghz(
            server.target,
            written.query,
            concurrency=settings.concurrency,
            duration_s=settings.duration_s,
            server_pid=server.pid,
        ),
        "fixed_rate": ghz(
            server.target,
            written.query,
            concurrency=16,
            rate=settings.rate,
            duration_s=settings.duration_s,
            server_pid=server.pid,
        ),
        "response_file": str(response_file),
    }
    if settings.profiler is not None:
        result["profile"] = settings.profiler.during(
            f"query-{backend}",
            server,
            lambda: ghz(
                server.target,
                written.query,
                concurrency=settings.concurrency,
                duration_s=settings.duration_s,
            ),
        )
    return result


def query_baseline(
    settings: Settings, query: dict[str, Any], response_file: Path
) -> dict[str, Any]:
    """The same query against a server answering a prebuilt response of the
    same bytes."""
    with baseline_server("query", settings.work, response=response_file) as server:
        ghz(server.target, query, concurrency=4, count=200)
        return ghz(
            server.target,
            query,
            concurrency=settings.concurrency,
            duration_s=settings.duration_s,
            server_pid=server.pid,
        )


def long_range(settings: Settings, server: Child, backend: str) -> dict[str, Any]:
    """QueryRange over 7 days at a 2-hour step for an app with 10 series,
    one query at a time."""
    written = data.seven_days(f"bench-7d-{backend}-{settings.run_id}", now_ms())
    started = time.monotonic()
    write_all(server.target, written.requests, timeout_s=300)
    written_s = time.monotonic() - started
    visible_s = wait_stored(server.target, written, settle_s=FLUSH_INTERVAL_S + 0.5)
    _, points = counted(server.target, written.query)
    ghz(server.target, written.query, concurrency=1, count=2, timeout_s=120)  # warm-up
    result: dict[str, Any] = {
        "samples": written.samples,
        "series": 10,
        "minutes_covered": 7 * 24 * 60 * 10,
        "points": points,
        "write_s": round(written_s, 2),
        "visible_after_s": round(visible_s, 2),
        # Upper bound of the time to store 100,800 partials (one flush).
        "stored_partials_per_s": round(7 * 24 * 60 * 10 / visible_s),
        "latency": ghz(
            server.target,
            written.query,
            concurrency=1,
            duration_s=settings.duration_s,
            timeout_s=120,
            server_pid=server.pid,
        ),
    }
    if settings.profiler is not None:
        result["profile"] = settings.profiler.during(
            f"query-7d-{backend}",
            server,
            lambda: ghz(
                server.target,
                written.query,
                concurrency=1,
                duration_s=settings.duration_s,
                timeout_s=120,
            ),
        )
    return result


def rss(settings: Settings) -> dict[str, Any]:
    """Resident memory of a fresh server (embedded store) holding 100,000
    active series: 10 samples each in the current minute, still in its
    in-memory aggregates (the hot window) after they are flushed."""
    server = metaas_server(
        "rss",
        f"sqlite:///{settings.work / 'rss.db'}",
        settings.work,
        flush_interval_s=FLUSH_INTERVAL_S,
    )
    with server:
        idle = server.memory_mib()
        requests = data.many_series(f"bench-rss-{settings.run_id}", now_ms())
        started = time.monotonic()
        accepted = write_all(server.target, requests)
        written_s = time.monotonic() - started
        time.sleep(3 * FLUSH_INTERVAL_S)  # flushed to storage, still in the hot window
        after = server.memory_mib()
    return {
        "series": 100_000,
        "samples": accepted,
        "write_s": round(written_s, 2),
        "idle_rss_mib": round(idle["rss_mib"], 1),
        "rss_mib": round(after["rss_mib"], 1),
        "peak_rss_mib": round(after["peak_rss_mib"], 1),
    }


def shadow(settings: Settings, *, workers: int) -> dict[str, Any]:
    """Served-path latency of the same query for an app in ``off`` and one in
    ``shadow`` at check ratio 1.0, old and new backends both embedded stores,
    in one server with ``--shadow-workers workers``: alternating rounds one
    request at a time (the headline), then each once at the fixed rate."""
    from bench.flags import write_flags

    flags = settings.work / f"flags-{workers}.json"
    apps = {
        "off": f"bench-off{workers}-{settings.run_id}",
        "shadow": f"bench-shadow{workers}-{settings.run_id}",
    }
    write_flags(flags, dict.fromkeys(apps.values(), "dualwrite"), ratio=1.0)
    server = metaas_server(
        f"shadow-{workers}",
        f"sqlite:///{settings.work / f'shadow-{workers}-old.db'}",
        settings.work,
        flush_interval_s=FLUSH_INTERVAL_S,
        extra=(
            "--migration-target",
            f"sqlite:///{settings.work / f'shadow-{workers}-new.db'}",
            "--flags",
            str(flags),
            "--shadow-workers",
            str(workers),
        ),
    )
    with server:
        queries = {}
        for stage, app in apps.items():
            written = data.one_hour(app, now_ms())
            write_all(server.target, written.requests)
            wait_visible(server.target, written)
            queries[stage] = written.query
        # Dual writes reach the new backend in the same flush; give it one more.
        time.sleep(2 * FLUSH_INTERVAL_S)
        write_flags(flags, {apps["off"]: "off", apps["shadow"]: "shadow"}, ratio=1.0)
        _wait_stage(server.target, apps["shadow"], "shadow")
        _wait_stage(server.target, apps["off"], "off")
        for query in queries.values():
            ghz(server.target, query, concurrency=4, count=200)
        # Headline: one request at a time, so the figure is the latency the
        # shadow read adds, not queueing. Rounds alternate to cancel drift.
        rounds: dict[str, list[dict[str, Any]]] = {"off": [], "shadow": []}
        for _ in range(2):
            for stage, query in queries.items():
                rounds[stage].append(
                    ghz(
                        server.target,
                        query,
                        concurrency=1,
                        duration_s=settings.duration_s / 2,
                        server_pid=server.pid,
                    )
                )
        # Beside it, the same at the fixed rate of the backend runs.
        loaded = {
            stage: ghz(
                server.target,
                query,
                concurrency=16,
                rate=settings.rate,
                duration_s=settings.duration_s / 2,
                server_pid=server.pid,
            )
            for stage, query in queries.items()
        }
        status = migration_status(server.target, apps["shadow"])
    medians = {stage: _mean([r["p50_ms"] for r in runs]) for stage, runs in rounds.items()}
    return {
        "shadow_workers": workers,
        "concurrency": 1,
        "off_median_ms": medians["off"],
        "shadow_median_ms": medians["shadow"],
        "ratio": medians["shadow"] / medians["off"],
        "off_p99_ms": _mean([r["p99_ms"] for r in rounds["off"]]),
        "shadow_p99_ms": _mean([r["p99_ms"] for r in rounds["shadow"]]),
        "at_rate": {
            "rate": settings.rate,
            "off_median_ms": loaded["off"]["p50_ms"],
            "shadow_median_ms": loaded["shadow"]["p50_ms"],
            "ratio": loaded["shadow"]["p50_ms"] / loaded["off"]["p50_ms"],
            "off": loaded["off"],
            "shadow": loaded["shadow"],
        },
        "comparisons": status.comparisons,
        "mismatches": status.mismatches,
        "rounds": rounds,
    }


def _wait_stage(target: str, app: str, stage: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while migration_status(target, app).stage != stage:
        if time.monotonic() > deadline:
            raise TimeoutError(f"app {app} not in stage {stage} after {timeout_s}s")
        time.sleep(0.2)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
