"""QueryRange load from ghz, the external Go load generator."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench._process import ROOT, cpu_seconds

QUERY_PROTO = "proto/metaas/v1/query.proto"
QUERY_RANGE = "metaas.v1.MetricsQuery/QueryRange"
GHZ = ROOT / ".tools" / "bin" / "ghz"


def ghz(
    target: str,
    data: dict[str, Any],
    *,
    concurrency: int,
    duration_s: float | None = None,
    count: int | None = None,
    rate: int | None = None,
    timeout_s: float = 20.0,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Run ghz against ``target`` and summarise its JSON report: QPS, latency
    percentiles in ms, status counts, and the server's CPU use meanwhile."""
    args = [
        str(GHZ),
        "--insecure",
        "--proto",
        QUERY_PROTO,
        "-i",
        "proto",
        "--call",
        QUERY_RANGE,
        "-d",
        json.dumps(data),
        "-c",
        str(concurrency),
        "-t",
        f"{timeout_s}s",
        "-O",
        "json",
    ]
    if duration_s is not None:
        args += ["-z", f"{duration_s}s"]
    if count is not None:
        args += ["-n", str(count)]
    if rate is not None:
        args += ["-r", str(rate)]
    before = cpu_seconds(server_pid) if server_pid else 0.0
    run = subprocess.run([*args, target], cwd=ROOT, capture_output=True, check=False, timeout=600)
    server_cpu = cpu_seconds(server_pid) - before if server_pid else None
    if not run.stdout.strip():
        raise RuntimeError(f"ghz failed ({run.returncode}): {run.stderr.decode(errors='replace')}")
    return summarise(json.loads(run.stdout), concurrency, rate, server_cpu)


def summarise(
    report: dict[str, Any], concurrency: int, rate: int | None, server_cpu_s: float | None
) -> dict[str, Any]:
    """Percentiles over the requests that succeeded; ghz's own distribution
    also counts the requests it cuts off when the duration ends."""
    details = report.get("details") or []
    ok_ms = np.array([d["latency"] / 1e6 for d in details if d.get("status") == "OK"])
    failed = Counter(d.get("status", "?") for d in details if d.get("status") != "OK")
    # ghz ends a -z run by closing its connections: requests still in flight
    # then fail with "use of closed network connection". They are not the
    # server's errors; at most one per concurrent worker.
    cut_off = sum(
        n
        for message, n in (report.get("errorDistribution") or {}).items()
        if "closed network connection" in message
    )
    cut_off = min(cut_off, concurrency, failed.get("Unavailable", 0))
    if cut_off:
        failed["Unavailable"] -= cut_off
    total_s = report["total"] / 1e9
    ok = int(ok_ms.size)

    def percentile(q: float) -> float | None:
        return float(np.percentile(ok_ms, q)) if ok else None

    return {
        "concurrency": concurrency,
        "rate": rate,
        "requests": int(report["count"]),
        "ok": ok,
        "errors": {code: n for code, n in failed.items() if n},
        "cut_off_at_end": cut_off,
        "error_messages": dict(list((report.get("errorDistribution") or {}).items())[:3]),
        "elapsed_s": round(total_s, 3),
        # Completed OK requests per second: failures do not count as throughput.
        "qps": ok / total_s if total_s else 0.0,
        "mean_ms": float(ok_ms.mean()) if ok else None,
        "p50_ms": percentile(50),
        "p90_ms": percentile(90),
        "p99_ms": percentile(99),
        "max_ms": float(ok_ms.max()) if ok else None,
        "server_cpu_cores": (server_cpu_s / total_s) if server_cpu_s and total_s else None,
    }


def available() -> bool:
    return Path(GHZ).is_file()
