"""The tenant scenario of issue 13: what one app's queries and writes cost as
it grows from 1 to 1,000 and 10,000 series of router latency (labels ``dyno``
and ``status``), each figure beside the same query on the one-series app.

Per backend, one server holds every app of the scenario. The queries of the
one-series app (every ratio needs them) and those behind the targets always
run; the others follow while the backend's time budget lasts and are listed
as skipped after it. On the embedded store two more servers measure ingest
with views on and off, and a third the bytes stored per sample.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf import json_format

from bench import data
from bench._process import Child, metaas_server, serve_accepts
from bench.client import QUERY_RANGE, query_bytes, write_paced
from bench.ghz import ghz
from bench.loadgen import write_requests
from bench.scenarios import FLUSH_INTERVAL_S, Settings, ingest_load, now_ms
from metaas.v1 import query_pb2

_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
if TYPE_CHECKING:
    _Call = grpc.UnaryUnaryMultiCallable[bytes, bytes]

BASE = 1  # series of the app every figure is compared with
CONCURRENCY = 8  # of the QPS runs
RATE = 50  # q/s of the fixed-rate run
RATE_CONCURRENCY = 16
QUERY_TIMEOUT_S = 120.0
# A query too slow for a ghz run of the load duration gets its QPS from two
# rounds of CONCURRENCY queries when they take at most this long.
SLOW_QPS_MAX_S = 8.0
# The fixed-rate run needs queries that can keep up with it; past this a
# single query already rules the rate out, and the run would only queue.
RATE_MAX_SINGLE_MS = 100.0


@dataclass(frozen=True, slots=True)
class Plan:
    """What the scenario does on one backend."""

    sizes: tuple[int, ...]  # series of each app
    windows: tuple[str, ...] = tuple(data.WINDOWS)
    history_hours: int = 0  # 7 * 24 when the 24 h and 7 d windows run
    history_every_h: dict[int, int] = field(default_factory=dict)  # by app size; default 1
    rate_app: int | None = None  # its merged 1 h query also runs at RATE q/s
    # Seconds from the start of the backend's scenario after which only the
    # queries that always run are started.
    budget_s: float = 330.0
    ingest_and_bytes: bool = False
    note: str = ""


PLANS = {
    "sqlite": Plan(
        (1, 1_000, 10_000),
        history_hours=7 * 24,
        history_every_h={10_000: 6},
        budget_s=330.0,
        ingest_and_bytes=True,
        note="the 10,000-series app's history has one sample per series every 6 hours "
        "(staggered: every hour holds a sixth of the series); one per series-hour "
        "(3.4 million stored rows) would take 5-7 minutes to store",
    ),
    "cassandra": Plan(
        (1, 1_000),
        windows=("1h/1min",),
        rate_app=1_000,
        budget_s=120.0,
        note="apps of 1 and 1,000 series, the last hour only: the 10,000-series app "
        "and the 7-day history would take several minutes to store",
    ),
    "dynamodb": Plan(
        (1, 100),
        windows=("1h/1min",),
        budget_s=90.0,
        note="apps of 1 and 100 series, the last hour only: the emulator stores and "
        "reads too slowly for more",
    ),
}


def views_supported() -> bool:
    """Whether this server has ``--views`` (the projections of issue 13)."""
    return serve_accepts("--views")


def run(
    settings: Settings, backend: str, storage: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """The scenario on one backend: write every app's data, wait until it is
    stored, then the queries; on the embedded store also ingest and bytes."""
    plan = PLANS[backend]
    deadline = time.monotonic() + plan.budget_s
    duration_s = load_duration_s(settings)
    found: dict[str, Any] = {
        "storage": storage.split("?")[0],
        "views": "server default" if views_supported() else "not supported by this server",
        "load_duration_s": duration_s,
        "note": plan.note,
    }
    end = data_end_ms(now_ms())
    found["data_ends"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(end / 1000))
    tenants = {
        size: data.Tenant(
            f"bench-tenant{size}-{backend}-{settings.run_id}",
            size,
            end,
            history_hours=plan.history_hours,
            history_every_h=plan.history_every_h.get(size, 1),
        )
        for size in plan.sizes
    }
    server = metaas_server(
        f"tenant-{backend}", storage, settings.work, flush_interval_s=FLUSH_INTERVAL_S, env=env
    )
    with server:
        found["apps"] = _write(server, tenants)
        found["queries"] = _queries(server, plan, tenants, duration_s, deadline)
        if plan.rate_app is not None:
            found["at_rate"] = _at_rate(server, tenants[plan.rate_app], duration_s)
        found["server_memory_mib"] = server.memory_mib()
    if plan.ingest_and_bytes:
        found["ingest"] = ingest(settings)
        found["bytes"] = stored_bytes(settings)
    return found


def data_end_ms(now: int) -> int:
    """The last millisecond of the data sets: the end of the latest minute
    HH:30 at or before ``now``. A query at a 1-hour step reads its unfinished
    last hour from minutes (31 of them here), the rest from hourly rollups,
    so its cost depends on the minute of the hour; fixing that minute keeps
    runs comparable, at the average of a dashboard refreshed at any time."""
    end = now - now % data.HOUR_MS + 31 * data.MINUTE_MS - 1
    return end if end <= now else end - data.HOUR_MS


def load_duration_s(settings: Settings) -> float:
    """Each query's loads are a tenth of the other scenarios' (1 s by
    default): the scenario runs up to 72 of each."""
    return max(1.0, settings.duration_s / 10)


def _write(server: Child, tenants: dict[int, data.Tenant]) -> dict[str, Any]:
    """Write every app through ``Write`` and wait until all of it is stored.
    (The queries then check the counts: see ``_check_counts``.)"""
    apps: dict[str, Any] = {}
    started = time.monotonic()
    for size, tenant in tenants.items():
        began = time.monotonic()
        accepted, waited = write_paced(server.target, tenant.requests(), timeout_s=300)
        apps[str(size)] = {
            "app": tenant.app,
            "series": size,
            "samples": accepted,
            "per_series_minute_last_hour": tenant.per_minute,
            "history_hours": tenant.history_hours,
            "history_every_h": tenant.history_every_h if tenant.history_hours else None,
            "write_s": round(time.monotonic() - began, 2),
            "waited_for_storage_s": waited,
        }
    written_s = time.monotonic() - started
    stored_s = _wait_stored(server)
    return {
        "by_size": apps,
        "write_s": round(written_s, 2),
        # From the first write until the server's log held nothing unstored.
        "stored_after_s": round(written_s + stored_s, 2),
    }


def _wait_stored(server: Child, timeout_s: float = 900) -> float:
    """Seconds until every log segment that held the writes has been stored
    and deleted (the server deletes a segment once its data is in storage)."""
    started = time.monotonic()
    wal = server.log_path.parent / "wal"
    pending = set(wal.glob("*.wal"))
    while any(p.exists() for p in pending):
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"writes not stored after {timeout_s:.0f}s")
        time.sleep(0.5)
    return time.monotonic() - started


def priority(plan: Plan) -> Iterator[tuple[tuple[int, str, str], bool]]:
    """Each (app size, window, shape) in the order they run, and whether it
    always runs: the one-series app's and those behind the targets first,
    then the rest."""
    always = [(BASE, w, s) for w in data.WINDOWS for s in data.SHAPES]
    always += [(1_000, "1h/1min", s) for s in ("merged", "by_status", "one_series")]
    always += [
        (10_000, "7d/1h", "merged"),
        (10_000, "24h/5min", "merged"),
        (10_000, "1h/1min", "by_dyno"),
    ]
    rest = [(n, w, s) for n in plan.sizes for w in data.WINDOWS for s in data.SHAPES]
    seen: set[tuple[int, str, str]] = set()
    for item in always + rest:
        if item[0] in plan.sizes and item[1] in plan.windows and item not in seen:
            seen.add(item)
            yield item, item in always


def _queries(
    server: Child,
    plan: Plan,
    tenants: dict[int, data.Tenant],
    duration_s: float,
    deadline: float,
) -> list[dict[str, Any]]:
    measured = []
    for (size, window, shape), always in priority(plan):
        entry: dict[str, Any] = {"series": size, "window": window, "shape": shape}
        if not always and time.monotonic() > deadline:
            entry["skipped"] = f"past the backend's time budget ({plan.budget_s:.0f} s)"
        else:
            tenant = tenants[size]
            query = data.tenant_query(tenant.app, tenant.now_ms, window, shape)
            try:
                entry |= measure(server, query, duration_s)
            except Exception as error:  # noqa: BLE001 - recorded, the other queries still run
                entry["error"] = f"{type(error).__name__}: {error}"[:500]
            else:
                _check_counts(entry, tenant)
        measured.append(entry)
    _add_ratios(measured)
    return measured


def _check_counts(entry: dict[str, Any], tenant: data.Tenant) -> None:
    """A merged query over the last hour, or over the whole history, counts
    every sample written there: anything else means the data set was not
    all stored, and the figures would be wrong."""
    if entry["shape"] != "merged":
        return
    if entry["window"] == "1h/1min":
        expected = tenant.series * 60 * tenant.per_minute
    elif entry["window"] == "7d/1h" and tenant.history_hours == 7 * 24:
        expected = tenant.samples
    else:
        return
    if entry["samples_counted"] != expected:
        raise RuntimeError(
            f"{tenant.app} {entry['window']}: {entry['samples_counted']} of {expected} "
            "samples counted after the writes were stored"
        )


def measure(server: Child, query: dict[str, Any], duration_s: float) -> dict[str, Any]:
    """Latency at concurrency 1 and QPS at CONCURRENCY. The query is first
    timed alone, twice unless the first took longer than ``duration_s``
    (these are the warm-up), and the faster decides how it is measured. A
    fast query then runs under ghz for ``duration_s`` at each concurrency. A
    slower one is timed from here, one query at a time, at least twice (the
    first query counts when it took longer than ``duration_s``); its QPS
    comes from two rounds of CONCURRENCY queries under ghz if they fit in
    ``SLOW_QPS_MAX_S``, and is not measured otherwise."""
    with grpc.insecure_channel(server.target, options=_OPTIONS) as channel:
        call: _Call = channel.unary_unary(QUERY_RANGE)  # bytes in, bytes out
        request = json_format.ParseDict(query, query_pb2.QueryRangeRequest()).SerializeToString()
        first_s, response = _timed(call, request)
        slow = first_s > duration_s
        single_s = first_s if slow else min(first_s, _timed(call, request)[0])
        found: dict[str, Any] = {
            "points": sum(len(s.times_ms) for s in response.series),
            "groups": len(response.series),
            "samples_counted": _count(response),
            "first_ms": round(first_s * 1000, 2),
            "single_ms": round(single_s * 1000, 2),
            "query": query,
        }
        if single_s <= duration_s / 10:
            found["c1"] = ghz(
                server.target, query, concurrency=1, duration_s=duration_s, server_pid=server.pid
            )
        else:
            found["c1"] = _one_at_a_time(
                server, call, request, duration_s, first_s=first_s if slow else None
            )
    if single_s <= duration_s / 40:
        # Enough completions that the requests cut off at the end do not matter.
        found["c8"] = ghz(
            server.target,
            query,
            concurrency=CONCURRENCY,
            duration_s=duration_s,
            server_pid=server.pid,
        )
    elif 2 * CONCURRENCY * single_s <= SLOW_QPS_MAX_S:
        found["c8"] = ghz(
            server.target,
            query,
            concurrency=CONCURRENCY,
            count=2 * CONCURRENCY,
            timeout_s=QUERY_TIMEOUT_S,
            server_pid=server.pid,
        )
    else:
        found["c8"] = {
            "skipped": f"one query takes {single_s * 1000:,.0f} ms: "
            f"{2 * CONCURRENCY} of them would take over {SLOW_QPS_MAX_S:g} s"
        }
    p50 = found["c1"].get("p50_ms")
    points = found["points"]
    found["us_per_point"] = round(p50 * 1000 / points, 2) if p50 is not None and points else None
    return found


def _timed(call: _Call, request: bytes) -> tuple[float, query_pb2.QueryRangeResponse]:
    started = time.perf_counter()
    reply = call(request, timeout=QUERY_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    return elapsed, query_pb2.QueryRangeResponse.FromString(reply)


def _count(response: query_pb2.QueryRangeResponse) -> int | None:
    total = None
    for series in response.series:
        for stat in series.stats:
            if stat.stat == "count":
                total = (total or 0) + int(sum(stat.values))
    return total


def _one_at_a_time(
    server: Child,
    call: _Call,
    request: bytes,
    duration_s: float,
    *,
    first_s: float | None,
) -> dict[str, Any]:
    """At least two queries and up to 20, for ``duration_s``; ``first_s``, a
    query already timed, counts as the first."""
    latencies = [first_s] if first_s is not None else []
    cpu_before = server.cpu_seconds()
    started = time.monotonic()
    while len(latencies) < 2 or (time.monotonic() - started < duration_s and len(latencies) < 20):
        latencies.append(_timed(call, request)[0])
    elapsed = time.monotonic() - started
    ms = np.array(latencies) * 1000
    return {
        "concurrency": 1,
        "method": "timed one at a time from the bench process"
        + (" (the first query included)" if first_s is not None else ""),
        "requests": int(ms.size),
        "ok": int(ms.size),
        "qps": ms.size / (ms.sum() / 1000),
        "mean_ms": float(ms.mean()),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "server_cpu_cores": (server.cpu_seconds() - cpu_before) / elapsed if elapsed else None,
    }


def _add_ratios(measured: list[dict[str, Any]]) -> None:
    """Each figure against the same window and shape on the one-series app."""
    base = {(e["window"], e["shape"]): e for e in measured if e["series"] == BASE and "c1" in e}
    for entry in measured:
        reference = base.get((entry["window"], entry["shape"]))
        if entry["series"] == BASE or reference is None or "c1" not in entry:
            continue
        entry["ratio"] = {
            "p50": _ratio(entry["c1"].get("p50_ms"), reference["c1"].get("p50_ms")),
            "p99": _ratio(entry["c1"].get("p99_ms"), reference["c1"].get("p99_ms")),
            "qps_c8": _ratio(entry["c8"].get("qps"), reference["c8"].get("qps")),
        }


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def _at_rate(server: Child, tenant: data.Tenant, duration_s: float) -> dict[str, Any]:
    """The app's merged 1-hour query at RATE q/s (RATE_CONCURRENCY workers)."""
    query = data.tenant_query(tenant.app, tenant.now_ms, "1h/1min", "merged")
    found: dict[str, Any] = {"series": tenant.series, "rate": RATE, "query": query}
    started = time.perf_counter()
    query_bytes(server.target, query, timeout_s=QUERY_TIMEOUT_S)
    single_s = time.perf_counter() - started
    if single_s * 1000 > RATE_MAX_SINGLE_MS:
        found["skipped"] = (
            f"one query alone takes {single_s * 1000:,.0f} ms; at {RATE} q/s the "
            "requests would only queue"
        )
        found["single_ms"] = single_s * 1000
        return found
    run_s = max(5.0, duration_s)
    return found | ghz(
        server.target,
        query,
        concurrency=RATE_CONCURRENCY,
        rate=RATE,
        duration_s=run_s,
        server_pid=server.pid,
    )


def ingest(settings: Settings) -> dict[str, Any]:
    """Samples/s acknowledged for the 10,000-series tenant (100 requests of 100
    series x 100 samples, together every series), with views on (the
    server's default) and off (``--views none``), each on a fresh server."""
    requests = data.tenant_ingest_requests(f"bench-tenant-ingest-{settings.run_id}", now_ms())
    path = settings.work / "tenant-ingest.bin"
    write_requests(path, requests)
    short = dataclasses.replace(settings, duration_s=max(2.0, settings.duration_s / 2))
    found: dict[str, Any] = {
        "shape": f"{len(requests)} distinct requests of 100 series x 100 samples over "
        "10,000 series (2,500 dynos x 4 statuses), replayed",
        "request_bytes": sum(len(r) for r in requests) // len(requests),
    }
    if views_supported():
        found["views_on"] = _ingest_run(short, "tenant-views-on", (), path)
        found["views_off"] = _ingest_run(short, "tenant-views-off", ("--views", "none"), path)
    else:
        found["views_on"] = found["views_off"] = _ingest_run(short, "tenant-views", (), path)
        found["note"] = "this server has no --views: views on and off are the same run"
    return found


def _ingest_run(
    settings: Settings, name: str, extra: tuple[str, ...], path: Path
) -> dict[str, Any]:
    server = metaas_server(
        name,
        f"sqlite:///{settings.work / f'{name}.db'}",
        settings.work,
        flush_interval_s=FLUSH_INTERVAL_S,
        extra=extra,
    )
    with server:
        return {"flags": list(extra)} | ingest_load(settings, server, path)


def stored_bytes(settings: Settings, series: int = 100, per_minute: int = 60) -> dict[str, Any]:
    """Bytes the embedded store holds per sample: ``series`` series with
    ``per_minute`` samples in every minute of the last whole clock hour,
    written to a fresh server (default flags) and stored; then the server is
    stopped and the database's pages in use are counted."""
    now = now_ms()
    hour_end = now - now % data.HOUR_MS
    # A tenant whose last 60 minutes are exactly that clock hour.
    tenant = data.Tenant(
        f"bench-tenant-bytes-{settings.run_id}", series, hour_end - 1, per_minute=per_minute
    )
    path = settings.work / "tenant-bytes.db"
    server = metaas_server(
        "tenant-bytes", f"sqlite:///{path}", settings.work, flush_interval_s=FLUSH_INTERVAL_S
    )
    with server:
        accepted, _ = write_paced(server.target, tenant.requests())
        _wait_stored(server)
    # Stopped: the server's last connection has checkpointed SQLite's own log.
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        free = connection.execute("PRAGMA freelist_count").fetchone()[0]
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        tables = {
            name: connection.execute(
                f"SELECT count(*), coalesce(sum(length(distribution)), 0) FROM {name}"  # noqa: S608 - fixed names
            ).fetchone()
            for name in ("partials", "hourly")
        }
    stored = (pages - free) * page_size
    sketches = sum(size for _, size in tables.values())
    return {
        "series": series,
        "per_series_minute": per_minute,
        "minutes": 60,
        "samples": accepted,
        "file_bytes": stored,
        "bytes_per_sample": stored / accepted,
        "sketch_bytes": sketches,
        "sketch_bytes_per_sample": sketches / accepted,
        "rows": {name: rows for name, (rows, _) in tables.items()},
    }
