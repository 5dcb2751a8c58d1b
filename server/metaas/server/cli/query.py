"""``metaas query``: a range query printed as a table or JSON."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table

from metaas.client import DEFAULT_STATS, MetaasError
from metaas.server.cli._client import Connection, client_options
from metaas.server.cli._params import DURATION, LABEL_PAIR, TIMESTAMP


@click.command()
@client_options
@click.option("--app", required=True)
@click.option("--metric", required=True)
@click.option(
    "--since",
    type=DURATION,
    default="1h",
    help="Range ending now, e.g. 30m, 6h, 7d; its start is rounded down to a multiple of --step.",
)
@click.option(
    "--start", type=TIMESTAMP, help="Range start (ISO 8601 or Unix ms); overrides --since."
)
@click.option("--end", type=TIMESTAMP, help="Range end, exclusive (default: now).")
@click.option(
    "--step", type=DURATION, default="1m", help="Bucket width, a whole number of minutes."
)
@click.option(
    "--stats",
    default=",".join(DEFAULT_STATS),
    help="Comma-separated: count sum min max mean p50 p90 p95 p99 p999 q<fraction>.",
)
@click.option(
    "--match", "matchers", type=LABEL_PAIR, multiple=True, help="Label filter name=value."
)
@click.option("--group-by", multiple=True, help="Label to group by (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def query(
    connection: Connection,
    app: str,
    metric: str,
    since: int,
    start: int | None,
    end: int | None,
    step: int,
    stats: str,
    matchers: tuple[tuple[str, str], ...],
    group_by: tuple[str, ...],
    as_json: bool,
) -> None:
    """Query per-step statistics of a metric."""
    end_ms = end if end is not None else time.time_ns() // 1_000_000
    start_ms = start if start is not None else end_ms - since
    # Buckets on multiples of the step, as a dashboard aligns them: they read
    # better, and whole-hour steps are then answered from hourly rollups.
    aligned = start is None and step > 0 and step % 60_000 == 0
    start_ms -= start_ms % (step if aligned else 60_000)
    names = [s.strip() for s in stats.split(",") if s.strip()]
    try:
        with connection.open() as client:
            result = client.query_range(
                app,
                metric,
                start_ms,
                end_ms,
                step_ms=step,
                stats=names,
                matchers=dict(matchers),
                group_by=group_by,
            )
    except MetaasError as error:
        for violation in error.violations:
            click.echo(f"  {violation.field}: {violation.description}", err=True)
        raise click.ClickException(str(error)) from error
    if as_json:
        click.echo(
            json.dumps(
                {
                    "served_by": result.served_by,
                    "series": [
                        {
                            "labels": dict(s.labels),
                            "times_ms": list(s.times_ms),
                            "stats": {k: [_json_number(x) for x in v] for k, v in s.stats.items()},
                        }
                        for s in result.series
                    ],
                },
                indent=2,
            )
        )
        return
    console = Console()
    if not result.series:
        console.print(f"no data (served by {result.served_by})")
        return
    for series in result.series:
        title = ", ".join(f"{k}={v}" for k, v in series.labels.items()) or f"{app} {metric}"
        table = Table(title=title, caption=f"served by {result.served_by}")
        table.add_column("time (UTC)")
        for name in series.stats:
            table.add_column(name, justify="right")
        for t, row in series.rows():
            stamp = datetime.fromtimestamp(t / 1000, UTC).strftime("%Y-%m-%d %H:%M")
            table.add_row(stamp, *(_format(v) for v in row.values()))
        console.print(table)


def _format(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.6g}"


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value
