"""The summary: headline figures, targets of issue 8 (and, through
``tenant_report`` and ``kafka_report``, of issues 13 and 16), machine, and
the table."""

from __future__ import annotations

import os
import platform
import sqlite3
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import kafka_report, tenant_report
from bench._figures import get as _get
from bench._figures import num as _num
from bench._figures import ratio as _ratio

Row = dict[str, Any]

# (figure key, comparison, limit, what the target says)
TARGETS: list[tuple[str, str, float, str]] = [
    ("ingest_samples_per_s", ">=", 1_000_000, "ingest >= 1,000,000 samples/s, embedded store"),
    ("ingest_vs_baseline", ">=", 0.5, "ingest >= 50% of the parse-only baseline"),
    ("query_vs_baseline", ">=", 0.5, "query QPS >= 50% of the bare grpc.aio baseline"),
    ("query_p99_ms", "<", 20, "query p99 < 20 ms at 32 concurrent, embedded store"),
    ("cassandra_query_p99_ms_at_rate", "<", 20, "query p99 < 20 ms at 200 q/s, Cassandra"),
    ("dynamodb_query_p99_ms_at_rate", "<", 20, "query p99 < 20 ms at 200 q/s, DynamoDB emulator"),
    ("query_7d_p99_ms", "<", 100, "7-day query p99 < 100 ms, embedded store"),
    ("cassandra_query_7d_p99_ms", "<", 250, "7-day query p99 < 250 ms, Cassandra"),
    ("shadow_overhead_ratio", "<=", 1.10, "shadow at ratio 1.0 adds <= 10% to median latency"),
    ("rss_mib_100k_series", "<", 1024, "RSS < 1 GiB with 100,000 active series"),
    *tenant_report.TARGETS,
    *kafka_report.TARGETS,
]


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The flat keys of latest.json, computed from the scenario details."""
    backends = results.get("backends", {})
    ingest_base = _get(results, "baselines", "ingest", "samples_per_s")
    query_base = _get(results, "baselines", "query", "qps")
    flat: dict[str, Any] = {}
    for backend in ("sqlite", "cassandra", "dynamodb"):
        prefix = "" if backend == "sqlite" else f"{backend}_"
        ingest = _get(backends, backend, "ingest", "samples_per_s")
        closed = _get(backends, backend, "query", "closed") or {}
        fixed = _get(backends, backend, "query", "fixed_rate") or {}
        week = _get(backends, backend, "long_range", "latency") or {}
        flat |= {
            f"{prefix}ingest_samples_per_s": ingest,
            f"{prefix}ingest_vs_baseline": _ratio(ingest, ingest_base),
            f"{prefix}query_qps": closed.get("qps"),
            f"{prefix}query_p50_ms": closed.get("p50_ms"),
            f"{prefix}query_p99_ms": closed.get("p99_ms"),
            f"{prefix}query_vs_baseline": _ratio(closed.get("qps"), query_base),
            f"{prefix}query_p99_ms_at_rate": fixed.get("p99_ms"),
            f"{prefix}query_7d_p50_ms": week.get("p50_ms"),
            f"{prefix}query_7d_p99_ms": week.get("p99_ms"),
        }
    flat["ingest_10_series_samples_per_s"] = _get(
        backends, "sqlite", "ingest_10_series", "samples_per_s"
    )
    flat["ingest_baseline_samples_per_s"] = ingest_base
    flat["query_baseline_qps"] = query_base
    flat["query_baseline_p99_ms"] = _get(results, "baselines", "query", "p99_ms")
    flat["shadow_overhead_ratio"] = _get(results, "shadow", "ratio")
    flat["shadow_inline_overhead_ratio"] = _get(results, "shadow_inline", "ratio")
    flat["rss_mib_100k_series"] = _get(results, "rss", "rss_mib")
    return flat | tenant_report.headline(results) | kafka_report.headline(results)


def targets(flat: dict[str, Any]) -> list[dict[str, Any]]:
    checks: dict[str, Callable[[float, float], bool]] = {
        ">=": lambda a, b: a >= b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
    }
    return [
        {
            "target": text,
            "key": key,
            "measured": flat.get(key),
            "limit": f"{op} {limit:g}",
            "met": None if flat.get(key) is None else checks[op](flat[key], limit),
        }
        for key, op, limit, text in TARGETS
    ]


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kib = int(line.split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": metadata.version("grpcio"),
        "protobuf": metadata.version("protobuf"),
        "numpy": metadata.version("numpy"),
        "sqlite": sqlite3.sqlite_version,
        "loadavg_at_start": os.getloadavg(),
    }


def _met(flat: dict[str, Any], *keys: str) -> str:
    """yes, no or - (not measured), per target key."""
    found = {t["key"]: t["met"] for t in targets(flat)}
    return " / ".join({True: "yes", False: "no", None: "-"}[found.get(k)] for k in keys)


def rows(results: dict[str, Any], flat: dict[str, Any]) -> list[Row]:
    """One row per figure: value, baseline, ratio, target, whether met; the
    rows of the scenarios that ran."""
    out: list[Row] = []
    if any(results.get(k) for k in ("backends", "codec", "rss", "shadow", "shadow_inline")):
        out += _issue8_rows(results, flat)
    if results.get("tenant"):
        out += tenant_report.rows(results, flat, lambda *keys: _met(flat, *keys))
    if results.get("kafka"):
        out += kafka_report.rows(results, flat, lambda *keys: _met(flat, *keys))
    return out


def _issue8_rows(results: dict[str, Any], flat: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    ingest_base = flat["ingest_baseline_samples_per_s"]
    query_base = flat["query_baseline_qps"]
    for backend in ("sqlite", "cassandra", "dynamodb"):
        p = "" if backend == "sqlite" else f"{backend}_"
        first = backend == "sqlite"
        out.append(
            {
                "scenario": f"ingest 10k-sample Writes (100 series), {backend}",
                "figure": "samples/s",
                "value": _num(flat[f"{p}ingest_samples_per_s"]),
                "baseline": _num(ingest_base),
                "ratio": _num(flat[f"{p}ingest_vs_baseline"], 2),
                "target": ">= 1,000,000; >= 0.50" if first else "",
                "met": _met(flat, "ingest_samples_per_s", "ingest_vs_baseline") if first else "",
            }
        )
    out.append(
        {
            "scenario": "ingest, same samples in 10 series, sqlite",
            "figure": "samples/s",
            "value": _num(flat["ingest_10_series_samples_per_s"]),
            "baseline": "",
            "ratio": "",
            "target": "",
            "met": "",
        }
    )
    for backend in ("sqlite", "cassandra", "dynamodb"):
        p = "" if backend == "sqlite" else f"{backend}_"
        first = backend == "sqlite"
        out.append(
            {
                "scenario": f"query 1 h @1 min, c=32, {backend}",
                "figure": "QPS",
                "value": _num(flat[f"{p}query_qps"]),
                "baseline": _num(query_base),
                "ratio": _num(flat[f"{p}query_vs_baseline"], 2),
                "target": ">= 0.50" if first else "",
                "met": _met(flat, "query_vs_baseline") if first else "",
            }
        )
        out.append(
            {
                "scenario": f"query 1 h @1 min, c=32, {backend}",
                "figure": "p50 / p99 ms",
                "value": f"{_num(flat[f'{p}query_p50_ms'])} / {_num(flat[f'{p}query_p99_ms'])}",
                "baseline": _num(flat["query_baseline_p99_ms"]),
                "ratio": "",
                "target": "p99 < 20" if first else "",
                "met": _met(flat, "query_p99_ms") if first else "",
            }
        )
        out.append(
            {
                "scenario": f"query 1 h @1 min, 200 q/s, {backend}",
                "figure": "p99 ms",
                "value": _num(flat[f"{p}query_p99_ms_at_rate"]),
                "baseline": "",
                "ratio": "",
                "target": "" if first else "< 20",
                "met": "" if first else _met(flat, f"{p}query_p99_ms_at_rate"),
            }
        )
    for backend, limit in (("sqlite", 100), ("cassandra", 250)):
        p = "" if backend == "sqlite" else f"{backend}_"
        out.append(
            {
                "scenario": f"query 7 d @2 h, 10 series, c=1, {backend}",
                "figure": "p50 / p99 ms",
                "value": " / ".join(_num(flat[f"{p}query_7d_{q}_ms"]) for q in ("p50", "p99")),
                "baseline": "",
                "ratio": "",
                "target": f"p99 < {limit}",
                "met": _met(flat, f"{p}query_7d_p99_ms"),
            }
        )
    for key, how in (("shadow", "1 shadow worker"), ("shadow_inline", "on the serving loop")):
        shadow = results.get(key) or {}
        out.append(
            {
                "scenario": f"shadow at ratio 1.0 vs off, c=1, {how}",
                "figure": "median ms",
                "value": _num(shadow.get("shadow_median_ms"), 2),
                "baseline": _num(shadow.get("off_median_ms"), 2),
                "ratio": _num(shadow.get("ratio"), 2),
                "target": "<= 1.10" if key == "shadow" else "",
                "met": _met(flat, "shadow_overhead_ratio") if key == "shadow" else "",
            }
        )
        at_rate = shadow.get("at_rate") or {}
        out.append(
            {
                "scenario": f"shadow at ratio 1.0 vs off, {at_rate.get('rate', '-')} q/s, {how}",
                "figure": "median ms",
                "value": _num(at_rate.get("shadow_median_ms"), 2),
                "baseline": _num(at_rate.get("off_median_ms"), 2),
                "ratio": _num(at_rate.get("ratio"), 2),
                "target": "",
                "met": "",
            }
        )
    codec = results.get("codec") or {}
    for name in ("zstd", "gzip"):
        figures = codec.get(name) or {}
        out.append(
            {
                "scenario": f"codec 1 MB item, {name}",
                "figure": "MB/s comp / decomp",
                "value": f"{_num(figures.get('compress_mb_s'))} / "
                f"{_num(figures.get('decompress_mb_s'))}",
                "baseline": "",
                "ratio": _num(figures.get("ratio"), 2),
                "target": "",
                "met": "",
            }
        )
    rss = results.get("rss") or {}
    out.append(
        {
            "scenario": "RSS, 100,000 active series, sqlite",
            "figure": "MiB",
            "value": _num(rss.get("rss_mib")),
            "baseline": _num(rss.get("idle_rss_mib")),
            "ratio": "",
            "target": "< 1024",
            "met": _met(flat, "rss_mib_100k_series"),
        }
    )
    return out


COLUMNS = ("scenario", "figure", "value", "baseline", "ratio", "target", "met")
HEADERS = ("scenario", "figure", "metaas", "baseline", "ratio", "target", "met")


def table(table_rows: list[Row]) -> str:
    widths = [
        max([len(h), *(len(str(r[c])) for r in table_rows)])
        for c, h in zip(COLUMNS, HEADERS, strict=True)
    ]
    lines = [" | ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True))]
    lines.append("-|-".join("-" * w for w in widths))
    for row in table_rows:
        lines.append(" | ".join(str(row[c]).ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))
    return "\n".join(lines)


def markdown(table_rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in table_rows:
        lines.append("| " + " | ".join(str(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def main() -> None:
    """Print a results file's table as Markdown (for bench/README.md)."""
    import json
    import sys

    results = json.loads(
        Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/latest.json").read_text()
    )
    print(markdown(rows(results, headline(results))))


if __name__ == "__main__":
    main()
