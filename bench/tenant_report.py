"""The tenant scenario's part of the summary (issue 13): its flat keys, its
targets and its rows of the table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench._figures import get, num, ratio

Row = dict[str, Any]

# (figure key, comparison, limit, what the target says); all but the Cassandra
# one are the embedded store's. Ratios are against the one-series app.
TARGETS: list[tuple[str, str, float, str]] = [
    (
        "tenant_merged_ratio",
        "<=",
        2,
        "tenant: 1,000-series app merged 1 h @1 min, p50 <= 2x the 1-series app's",
    ),
    (
        "tenant_one_series_ratio",
        "<=",
        2,
        "tenant: one series by matchers in the 1,000-series app, p50 <= 2x",
    ),
    (
        "tenant_by_status_ratio",
        "<=",
        3,
        "tenant: 1,000-series app grouped by status, p50 <= 3x",
    ),
    ("tenant_merged_p99_ms", "<=", 20, "tenant: 1,000-series app merged 1 h @1 min, p99 <= 20 ms"),
    ("tenant_10k_7d_p99_ms", "<=", 50, "tenant: 10,000-series app merged 7 d @1 h, p99 <= 50 ms"),
    (
        "tenant_10k_24h_p99_ms",
        "<=",
        50,
        "tenant: 10,000-series app merged 24 h @5 min, p99 <= 50 ms",
    ),
    (
        "tenant_by_dyno_us_per_point",
        "<=",
        20,
        "tenant: 10,000-series app by dyno <= 20 us per returned point (p50, worst window)",
    ),
    (
        "cassandra_tenant_merged_p99_ms_at_rate",
        "<=",
        20,
        "tenant: Cassandra 1,000-series app merged 1 h @1 min, p99 <= 20 ms at 50 q/s",
    ),
    (
        "tenant_ingest_samples_per_s",
        ">=",
        1_000_000,
        "tenant: ingest of the 10,000-series tenant >= 1,000,000 samples/s, views on",
    ),
    (
        "tenant_ingest_views_ratio",
        ">=",
        0.75,
        "tenant: ingest with views on >= 75% of views off",
    ),
    (
        "tenant_bytes_per_sample",
        "<=",
        10,
        "tenant: stored bytes per sample <= 10 at 60 samples per series-minute",
    ),
]


def _entry(results: dict[str, Any], backend: str, series: int, window: str, shape: str) -> Any:
    for entry in get(results, "tenant", backend, "queries") or []:
        if (entry["series"], entry["window"], entry["shape"]) == (series, window, shape):
            return entry
    return None


def _figure(results: dict[str, Any], backend: str, query: tuple[int, str, str], *path: str) -> Any:
    entry = _entry(results, backend, *query)
    return get(entry, *path) if entry is not None else None


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The scenario's flat keys (None where it did not run)."""
    hour = (1_000, "1h/1min")
    by_dyno = [
        e["us_per_point"]
        for e in get(results, "tenant", "sqlite", "queries") or []
        if e["series"] == 10_000 and e["shape"] == "by_dyno" and e.get("us_per_point") is not None
    ]
    on = get(results, "tenant", "sqlite", "ingest", "views_on", "samples_per_s")
    off = get(results, "tenant", "sqlite", "ingest", "views_off", "samples_per_s")
    return {
        "tenant_merged_ratio": _figure(results, "sqlite", (*hour, "merged"), "ratio", "p50"),
        "tenant_by_status_ratio": _figure(results, "sqlite", (*hour, "by_status"), "ratio", "p50"),
        "tenant_one_series_ratio": _figure(
            results, "sqlite", (*hour, "one_series"), "ratio", "p50"
        ),
        "tenant_merged_p99_ms": _figure(results, "sqlite", (*hour, "merged"), "c1", "p99_ms"),
        "tenant_10k_7d_p99_ms": _figure(
            results, "sqlite", (10_000, "7d/1h", "merged"), "c1", "p99_ms"
        ),
        "tenant_10k_24h_p99_ms": _figure(
            results, "sqlite", (10_000, "24h/5min", "merged"), "c1", "p99_ms"
        ),
        "tenant_by_dyno_us_per_point": max(by_dyno) if by_dyno else None,
        "tenant_ingest_samples_per_s": on,
        "tenant_ingest_views_ratio": ratio(on, off),
        "tenant_bytes_per_sample": get(results, "tenant", "sqlite", "bytes", "bytes_per_sample"),
        "cassandra_tenant_merged_p99_ms": _figure(
            results, "cassandra", (*hour, "merged"), "c1", "p99_ms"
        ),
        "cassandra_tenant_merged_p99_ms_at_rate": get(
            results, "tenant", "cassandra", "at_rate", "p99_ms"
        ),
    }


# The keys of the targets a query entry stands for: (backend, series, window, shape) -> keys
_QUERY_TARGETS = {
    ("sqlite", 1_000, "1h/1min", "merged"): (
        "<= 2x p50; p99 <= 20",
        ("tenant_merged_ratio", "tenant_merged_p99_ms"),
    ),
    ("sqlite", 1_000, "1h/1min", "by_status"): ("<= 3x p50", ("tenant_by_status_ratio",)),
    ("sqlite", 1_000, "1h/1min", "one_series"): ("<= 2x p50", ("tenant_one_series_ratio",)),
    ("sqlite", 10_000, "7d/1h", "merged"): ("p99 <= 50", ("tenant_10k_7d_p99_ms",)),
    ("sqlite", 10_000, "24h/5min", "merged"): ("p99 <= 50", ("tenant_10k_24h_p99_ms",)),
}


def _latency(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return ""
    if "c1" not in entry:
        return "error" if "error" in entry else "skipped"
    c1, c8 = entry["c1"], entry.get("c8") or {}
    return f"{num(c1.get('p50_ms'), 2)} / {num(c1.get('p99_ms'), 2)}; {num(c8.get('qps'))}"


def rows(results: dict[str, Any], flat: dict[str, Any], met: Callable[..., str]) -> list[Row]:
    """One row per query (the one-series app's figures as the baseline), then
    the fixed-rate run, ingest and stored bytes."""
    out: list[Row] = []
    for backend, found in (results.get("tenant") or {}).items():
        if not found:
            continue
        for entry in found.get("queries") or []:
            key = (entry["series"], entry["window"], entry["shape"])
            target, keys = _QUERY_TARGETS.get((backend, *key), ("", ()))
            points = entry.get("points")
            out.append(
                {
                    "scenario": f"tenant {entry['series']:,} series, {entry['window']} "
                    f"{entry['shape']}, {backend}"
                    + (f" ({points:,} points)" if points is not None else ""),
                    "figure": "p50 / p99 ms c=1; QPS c=8",
                    "value": _latency(entry),
                    "baseline": _latency(_entry(results, backend, 1, *key[1:]))
                    if entry["series"] != 1
                    else "",
                    "ratio": num(get(entry, "ratio", "p50"), 2),
                    "target": target,
                    "met": met(*keys) if keys else "",
                }
            )
        at_rate = found.get("at_rate")
        if at_rate:
            cassandra = backend == "cassandra"
            out.append(
                {
                    "scenario": f"tenant {at_rate['series']:,} series, 1h/1min merged, "
                    f"{at_rate['rate']} q/s, {backend}",
                    "figure": "p50 / p99 ms",
                    "value": f"not run: one query {num(at_rate.get('single_ms'))} ms"
                    if "skipped" in at_rate
                    else f"{num(at_rate.get('p50_ms'), 2)} / {num(at_rate.get('p99_ms'), 2)}",
                    "baseline": "",
                    "ratio": "",
                    "target": "p99 <= 20" if cassandra else "",
                    "met": met("cassandra_tenant_merged_p99_ms_at_rate") if cassandra else "",
                }
            )
        if found.get("ingest"):
            out.append(
                {
                    "scenario": f"tenant ingest, 10,000 series, views on / off, {backend}"
                    + (" (no --views: one run)" if get(found, "ingest", "note") else ""),
                    "figure": "samples/s",
                    "value": num(flat.get("tenant_ingest_samples_per_s")),
                    "baseline": num(get(found, "ingest", "views_off", "samples_per_s")),
                    "ratio": num(flat.get("tenant_ingest_views_ratio"), 2),
                    "target": ">= 1,000,000; >= 0.75",
                    "met": met("tenant_ingest_samples_per_s", "tenant_ingest_views_ratio"),
                }
            )
        if found.get("bytes"):
            out.append(
                {
                    "scenario": f"tenant stored bytes, 60 samples per series-minute, {backend}",
                    "figure": "bytes/sample (sketches only)",
                    "value": f"{num(flat.get('tenant_bytes_per_sample'), 2)} "
                    f"({num(get(found, 'bytes', 'sketch_bytes_per_sample'), 2)})",
                    "baseline": "",
                    "ratio": "",
                    "target": "<= 10",
                    "met": met("tenant_bytes_per_sample"),
                }
            )
        if backend == "sqlite":
            out.append(
                {
                    "scenario": "tenant 10,000 series by dyno, worst window, sqlite",
                    "figure": "us per point (p50)",
                    "value": num(flat.get("tenant_by_dyno_us_per_point"), 2),
                    "baseline": "",
                    "ratio": "",
                    "target": "<= 20",
                    "met": met("tenant_by_dyno_us_per_point"),
                }
            )
    return out
