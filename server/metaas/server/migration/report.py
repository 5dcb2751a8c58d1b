"""A self-contained HTML page about a migration: each app's stage, a hint
when the new backend lacks history, per-backend latency percentiles over
time, error and consistency rates, and recent mismatches grouped by app,
metric and kind of difference (digest.py reads these from the status).
Charts are inline SVG drawn from GetMigrationStatus history, with round,
distinct ticks; no scripts, no network."""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from metaas.server.migration.digest import (
    AppStage,
    MismatchGroup,
    RepairHint,
    group_mismatches,
    other_apps_stage,
    repair_hints,
)
from metaas.server.migration.stages import PLANS, parse_stage
from metaas.v1 import migration_pb2

_WIDTH, _HEIGHT, _PAD = 720, 220, 44
_COLORS = {"old": "#d9822b", "new": "#2b7bd9"}
_DASH = {"p50": "", "p95": "6 3", "p99": "2 3"}


def render(
    status: migration_pb2.GetMigrationStatusResponse,
    *,
    generated_at: datetime,
    apps: Sequence[AppStage] = (),
) -> str:
    """The page for ``status`` (with its history), and each of ``apps``'
    stage as the server evaluated it."""
    if not status.migration_enabled:
        return _not_configured(status, generated_at)
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
    groups = group_mismatches(status.recent_mismatches)
    title = f"metaas migration: {status.old_backend} → {status.new_backend}"
    parts = [
        *_head(title),
        f"<p class='meta'>Generated {generated_at:%Y-%m-%d %H:%M:%S} UTC · window "
        f"{status.window_seconds}s · {status.comparisons} comparisons, "
        f"{status.mismatches} mismatches</p>",
        _stage_table(apps, status),
        _hints(repair_hints(groups, apps)),
        _backend_table(status.backends),
        "<h2>Read latency by backend (ms)</h2>",
        _chart(
            latency,
            unit="ms",
            color_of=lambda name: _COLORS.get(name.split()[0], "#555"),
            dash_of=lambda name: _DASH.get(name.split()[-1], ""),
            floor=1.0,
        ),
        "<h2>Error rate by backend (%)</h2>",
        _chart(errors, unit="%", color_of=lambda name: _COLORS.get(name, "#555"), floor=1.0),
        "<h2>Consistency of shadow comparisons (%)</h2>",
        _chart(
            {"consistent": consistency}, unit="%", color_of=lambda _name: "#2a9d55", fixed_max=100.0
        ),
        _fallbacks(status.fallbacks),
        _mismatches(groups, len(status.recent_mismatches)),
        _ingest_problems(status.ingest_problems),
        "</body></html>",
    ]
    return "\n".join(parts)


def _head(title: str) -> list[str]:
    return [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]


def _not_configured(
    status: migration_pb2.GetMigrationStatusResponse, generated_at: datetime
) -> str:
    backend = html.escape(status.old_backend or "its storage")
    parts = [
        *_head("metaas migration: not configured"),
        f"<p class='meta'>Generated {generated_at:%Y-%m-%d %H:%M:%S} UTC</p>",
        f"<p class='notice'>The migration is not configured: this server reads and writes "
        f"{backend} only, so there are no stages, comparisons or mismatches to show. To "
        "start one, serve with <code>--migration-target URL</code> "
        "(<code>METAAS_MIGRATION_TARGET</code>) and <code>--flags FILE</code> "
        "(<code>METAAS_FLAGS</code>), then move apps through the stages (README, "
        "“Migrating between backends”).</p>",
        _ingest_problems(status.ingest_problems),
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


_ROUND_STEPS = (1.0, 2.0, 5.0, 10.0)


def value_ticks(top: float, most: int = 5) -> tuple[list[float], int]:
    """Ticks from 0 to at least ``top`` a round step apart (1, 2 or 5 times
    a power of ten), at most ``most`` steps; and the decimals that show each
    step exactly."""
    raw = max(top, 1e-12) / most
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in _ROUND_STEPS if m * power >= raw * (1 - 1e-9))
    count = max(1, math.ceil(top / step - 1e-9))
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return [round(i * step, decimals) for i in range(count + 1)], decimals


_TIME_STEPS_MIN = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440)


def time_ticks(start_ms: int, end_ms: int, most: int = 6) -> list[int]:
    """Times in ``[start_ms, end_ms]`` on round minutes (1, 2, 5, 10, 15,
    30 minutes, hours), at most ``most`` of them."""
    span_min = (end_ms - start_ms) / 60_000
    step_min = next(
        (s for s in _TIME_STEPS_MIN if span_min / s < most),
        1440 * math.ceil(span_min / (1440 * (most - 1))),
    )
    step_ms = step_min * 60_000
    first = -(-start_ms // step_ms) * step_ms
    return list(range(first, end_ms + 1, step_ms))


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
        return "<p class='empty'>No data in the window yet.</p>"
    x0 = min(t for t, _ in points)
    x1 = max(max(t for t, _ in points), x0 + 60_000)
    top = fixed_max if fixed_max is not None else max(max(v for _, v in points), floor)
    y_ticks, decimals = value_ticks(top)
    y1 = y_ticks[-1]

    def sx(t: int) -> float:
        return _PAD + (t - x0) / (x1 - x0) * (_WIDTH - 2 * _PAD)

    def sy(v: float) -> float:
        return _HEIGHT - _PAD + -v / y1 * (_HEIGHT - 2 * _PAD)

    out = [
        f"<svg viewBox='0 0 {_WIDTH} {_HEIGHT}' width='{_WIDTH}' height='{_HEIGHT}' role='img'>",
        f"<rect x='{_PAD}' y='{_PAD}' width='{_WIDTH - 2 * _PAD}' "
        f"height='{_HEIGHT - 2 * _PAD}' class='plot'/>",
    ]
    for value in y_ticks:
        y = sy(value)
        out.append(
            f"<line x1='{_PAD}' x2='{_WIDTH - _PAD}' y1='{y:.1f}' y2='{y:.1f}' class='grid'/>"
        )
        out.append(
            f"<text x='{_PAD - 4}' y='{y + 4:.1f}' class='tick y' "
            f"text-anchor='end'>{value:.{decimals}f}</text>"
        )
    time_format = "%H:%M" if x1 - x0 < 86_400_000 else "%m-%d %H:%M"
    for t in time_ticks(x0, x1):
        label = datetime.fromtimestamp(t / 1000, UTC).strftime(time_format)
        out.append(
            f"<text x='{sx(t):.1f}' y='{_HEIGHT - _PAD + 16}' class='tick x' "
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
        f"<text x='{_WIDTH - _PAD}' y='{_PAD - 6}' class='unit' "
        f"text-anchor='end'>{html.escape(unit)} · time UTC</text></svg>"
    )
    return "\n".join(out)


def _stage_table(apps: Sequence[AppStage], status: migration_pb2.GetMigrationStatusResponse) -> str:
    fallback_of = {f.app: f for f in status.fallbacks}
    rows = [_stage_row(a.app, a.stage, f"{a.check_ratio:g}", fallback_of.get(a.app)) for a in apps]
    other = other_apps_stage(status.flags)
    if other is not None:
        rows.append(_stage_row("every other app", other, "", None, cls="other"))
    if not rows:
        return (
            "<h2>Stage of each app</h2><p class='empty'>No app is named in the flags "
            f"({html.escape(status.flags or 'none')}) or seen in a mismatch yet.</p>"
        )
    return (
        "<h2>Stage of each app</h2><table class='stages'><tr><th>app</th><th>stage</th>"
        "<th>reads served by</th><th>shadow reads</th><th>writes to</th>"
        "<th>check ratio</th><th>fallback</th></tr>" + "".join(rows) + "</table>"
    )


def _stage_row(
    app: str, stage: str, ratio: str, fallback: migration_pb2.Fallback | None, cls: str = ""
) -> str:
    parsed = parse_stage(stage)
    plan = PLANS[parsed] if parsed is not None else None
    reads = plan.reads.value if plan else ""
    shadow = (plan.shadow.value if plan.shadow else "—") if plan else ""
    writes = ", ".join(role.value for role in plan.writes) if plan else ""
    shown_fallback = (
        f"to old since {_time(fallback.since_ms)}: {fallback.reason}" if fallback else "—"
    )
    row_class = f" class='{cls}'" if cls else ""
    return (
        f"<tr{row_class}><td>{html.escape(app)}</td><td>{html.escape(stage)}</td>"
        f"<td>{reads}</td><td>{shadow}</td><td>{writes}</td><td>{ratio}</td>"
        f"<td>{html.escape(shown_fallback)}</td></tr>"
    )


def _hints(hints: Sequence[RepairHint]) -> str:
    return "".join(
        f"<p class='hint'>Hint: {html.escape(h.text)} <code>{html.escape(h.command)}</code></p>"
        for h in hints
    )


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


def _mismatches(groups: Sequence[MismatchGroup], total: int) -> str:
    if not groups:
        return "<h2>Recent mismatches</h2><p class='empty'>None.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(g.app)}</td><td>{html.escape(g.metric)}</td>"
        f"<td>{html.escape(g.kind)}</td><td class='count'>{g.count}</td>"
        f"<td>{html.escape(', '.join(g.stages))}</td>"
        f"<td>{_time(g.first_ms)}<br>{_time(g.last_ms)}</td>"
        f"<td>{html.escape(', '.join(g.series))}</td>"
        f"<td><pre>{html.escape(chr(10).join(g.example))}</pre></td></tr>"
        for g in groups
    )
    return (
        f"<h2>Recent mismatches</h2><p class='meta'>The last {total}, grouped by app, "
        "metric and kind of difference.</p><table class='mismatches'><tr><th>app</th>"
        "<th>metric</th><th>difference</th><th>count</th><th>stage</th>"
        "<th>first / last seen</th><th>series</th><th>newest diff</th></tr>"
        f"{rows}</table>"
    )


def _ingest_problems(problems: Sequence[str]) -> str:
    if not problems:
        return ""
    items = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
    return f"<h2>Ingest problems</h2><ul class='problems'>{items}</ul>"


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:980px}
h1{font-size:22px}h2{font-size:16px;margin-top:28px}.meta{color:#666}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}pre{margin:0;font-size:12px}
td.count{text-align:right}tr.other td{color:#666;font-style:italic}
.plot{fill:#fbfbfb;stroke:#ccc}.grid{stroke:#e6e6e6}.tick,.unit{font-size:11px;fill:#666}
.legend{font-size:12px;fill:#333}.empty{color:#888}
.hint,.notice{background:#fff8e1;border-left:4px solid #e0a800;padding:8px 12px}
"""
