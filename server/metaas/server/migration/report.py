"""A self-contained HTML page about a migration: per-backend latency
percentiles over time, error and consistency rates, mismatch samples. Charts
are inline SVG drawn from GetMigrationStatus history; no scripts, no network."""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from metaas.v1 import migration_pb2

_WIDTH, _HEIGHT, _PAD = 720, 220, 44
_COLORS = {"old": "#d9822b", "new": "#2b7bd9"}
_DASH = {"p50": "", "p95": "6 3", "p99": "2 3"}


def render(status: migration_pb2.GetMigrationStatusResponse, *, generated_at: datetime) -> str:
    history: dict[str, list[migration_pb2.HistoryPoint]] = defaultdict(list)
    for point in status.history:
        history[point.role].append(point)
    latency = {
        f"{role} {q}": [(p.minute_ms, getattr(p, f"latency_{q}_ms")) for p in points if p.calls]
        for role, points in sorted(history.items())
        for q in ("p50", "p95", "p99")
    }
    errors = {
        role: [(p.minute_ms, 100.0 * p.errors / p.calls) for p in points if p.calls]
        for role, points in sorted(history.items())
    }
    consistency: list[tuple[int, float]] = []
    for minute, (compared, mismatched) in sorted(_comparisons(status.history).items()):
        consistency.append((minute, 100.0 * (compared - mismatched) / compared))
    title = f"metaas migration: {status.old_backend} → {status.new_backend or '(none)'}"
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='meta'>Generated {generated_at:%Y-%m-%d %H:%M:%S} UTC · window "
        f"{status.window_seconds}s · {status.comparisons} comparisons, "
        f"{status.mismatches} mismatches</p>",
        _backend_table(status.backends),
        "<h2>Read latency by backend (ms)</h2>",
        _chart(
            latency,
            unit="ms",
            color_of=lambda name: _COLORS.get(name.split()[0], "#555"),
            dash_of=lambda name: _DASH.get(name.split()[-1], ""),
        ),
        "<h2>Error rate by backend (%)</h2>",
        _chart(errors, unit="%", color_of=lambda name: _COLORS.get(name, "#555"), floor=1.0),
        "<h2>Consistency of shadow comparisons (%)</h2>",
        _chart(
            {"consistent": consistency}, unit="%", color_of=lambda _name: "#2a9d55", fixed_max=100.0
        ),
        _fallbacks(status.fallbacks),
        _mismatches(status.recent_mismatches),
        "</body></html>",
    ]
    return "\n".join(parts)


def _comparisons(points: Sequence[migration_pb2.HistoryPoint]) -> dict[int, tuple[int, int]]:
    totals: dict[int, tuple[int, int]] = {}
    for p in points:
        if p.comparisons:
            compared, mismatched = totals.get(p.minute_ms, (0, 0))
            totals[p.minute_ms] = (compared + p.comparisons, mismatched + p.mismatches)
    return totals


def _chart(
    series: dict[str, list[tuple[int, float]]],
    *,
    unit: str,
    color_of: Callable[[str], str],
    dash_of: Callable[[str], str] | None = None,
    fixed_max: float | None = None,
    floor: float = 1e-9,
) -> str:
    points = [pt for values in series.values() for pt in values]
    if not points:
        return "<p class='empty'>No data yet.</p>"
    x0 = min(t for t, _ in points)
    x1 = max(max(t for t, _ in points), x0 + 60_000)
    y1 = fixed_max if fixed_max is not None else max(max(v for _, v in points) * 1.1, floor)

    def sx(t: int) -> float:
        return _PAD + (t - x0) / (x1 - x0) * (_WIDTH - 2 * _PAD)

    def sy(v: float) -> float:
        return _HEIGHT - _PAD + -v / y1 * (_HEIGHT - 2 * _PAD)

    out = [
        f"<svg viewBox='0 0 {_WIDTH} {_HEIGHT}' width='{_WIDTH}' height='{_HEIGHT}' role='img'>",
        f"<rect x='{_PAD}' y='{_PAD}' width='{_WIDTH - 2 * _PAD}' "
        f"height='{_HEIGHT - 2 * _PAD}' class='plot'/>",
    ]
    for i in range(5):
        value = y1 * i / 4
        y = sy(value)
        out.append(
            f"<line x1='{_PAD}' x2='{_WIDTH - _PAD}' y1='{y:.1f}' y2='{y:.1f}' class='grid'/>"
        )
        out.append(
            f"<text x='{_PAD - 4}' y='{y + 4:.1f}' class='tick' "
            f"text-anchor='end'>{value:.3g}</text>"
        )
    for t in (x0, (x0 + x1) // 2, x1):
        label = datetime.fromtimestamp(t / 1000, UTC).strftime("%H:%M")
        out.append(
            f"<text x='{sx(t):.1f}' y='{_HEIGHT - _PAD + 16}' class='tick' "
            f"text-anchor='middle'>{label}</text>"
        )
    legend_y = 14
    for index, (name, values) in enumerate(series.items()):
        if not values:
            continue
        color = color_of(name)
        dash = dash_of(name) if dash_of is not None else ""
        coords = " ".join(f"{sx(t):.1f},{sy(v):.1f}" for t, v in sorted(values))
        out.append(
            f"<polyline points='{coords}' fill='none' stroke='{color}' "
            f"stroke-width='2' stroke-dasharray='{dash}'/>"
        )
        for t, v in sorted(values):
            out.append(f"<circle cx='{sx(t):.1f}' cy='{sy(v):.1f}' r='2.5' fill='{color}'/>")
        x = _PAD + index * 110
        out.append(
            f"<line x1='{x}' x2='{x + 18}' y1='{legend_y}' y2='{legend_y}' "
            f"stroke='{color}' stroke-width='3' stroke-dasharray='{dash}'/>"
        )
        out.append(
            f"<text x='{x + 22}' y='{legend_y + 4}' class='legend'>{html.escape(name)}</text>"
        )
    out.append(
        f"<text x='{_WIDTH - _PAD}' y='{_PAD - 6}' class='tick' "
        f"text-anchor='end'>{html.escape(unit)}</text></svg>"
    )
    return "\n".join(out)


def _backend_table(backends: Sequence[migration_pb2.BackendStatus]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(b.role)}</td><td>{html.escape(b.backend)}</td>"
        f"<td>{b.reads}</td><td>{b.read_errors}</td><td>{b.writes}</td><td>{b.write_errors}</td>"
        f"<td>{b.latency_p50_ms:.2f}</td><td>{b.latency_p95_ms:.2f}</td>"
        f"<td>{b.latency_p99_ms:.2f}</td><td>{b.write_lag_seconds:.1f}</td></tr>"
        for b in backends
    )
    return (
        "<h2>Backends over the window</h2><table><tr><th>role</th><th>backend</th>"
        "<th>reads</th><th>read errors</th><th>writes</th><th>write errors</th>"
        "<th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>write lag s</th></tr>"
        f"{rows}</table>"
    )


def _fallbacks(fallbacks: Sequence[migration_pb2.Fallback]) -> str:
    if not fallbacks:
        return "<h2>Fallbacks</h2><p class='empty'>None active.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(f.app)}</td><td>{html.escape(f.stage)}</td>"
        f"<td>{html.escape(f.reason)}</td><td>{_time(f.since_ms)}</td></tr>"
        for f in fallbacks
    )
    return (
        "<h2>Fallbacks</h2><table><tr><th>app</th><th>stage</th><th>reason</th>"
        f"<th>since</th></tr>{rows}</table>"
    )


def _mismatches(samples: Sequence[migration_pb2.MismatchSample]) -> str:
    if not samples:
        return "<h2>Recent mismatches</h2><p class='empty'>None.</p>"
    rows = "".join(
        f"<tr><td>{_time(m.at_ms)}</td><td>{html.escape(m.app)}</td>"
        f"<td>{html.escape(m.metric)}</td><td>{html.escape(m.stage)}</td>"
        f"<td>{m.primary_ms:.1f} / {m.shadow_ms:.1f}</td>"
        f"<td><pre>{html.escape(chr(10).join(m.diff))}</pre></td></tr>"
        for m in samples
    )
    return (
        "<h2>Recent mismatches</h2><table><tr><th>at</th><th>app</th><th>metric</th>"
        "<th>stage</th><th>primary / shadow ms</th><th>diff</th></tr>"
        f"{rows}</table>"
    )


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:980px}
h1{font-size:22px}h2{font-size:16px;margin-top:28px}.meta{color:#666}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}pre{margin:0;font-size:12px}
.plot{fill:#fbfbfb;stroke:#ccc}.grid{stroke:#e6e6e6}.tick{font-size:11px;fill:#666}
.legend{font-size:12px;fill:#333}.empty{color:#888}
"""
