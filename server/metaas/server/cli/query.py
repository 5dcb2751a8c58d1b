"""``metaas query``: a range query printed as a table, CSV, TSV or JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence

import click

from metaas.client import DEFAULT_STATS, Client, MetaasError, QueryResult
from metaas.server.cli._client import Connection, client_options
from metaas.server.cli._output import Column, Frame, Kind, emit, json_number, output_option
from metaas.server.cli._params import (
    LABEL_PAIR,
    STEP,
    Command,
    Range,
    format_duration,
    list_option,
    range_options,
    resolve_range,
)

FLUSH_HINT = (
    "samples become queryable within the server's flush interval "
    "(--flush-interval-s, 10 s by default) after they are written"
)


@click.command(cls=Command)
@client_options
@click.option("--app", required=True, help="The app whose data to read.")
@click.option("--metric", required=True, help="The metric, e.g. router.latency_ms.")
@range_options("1h", "its start is rounded down to a multiple of --step when --start is not given")
@click.option("--step", type=STEP, default="1m", help=f"Bucket width: {STEP.ACCEPTED}.")
@list_option(
    "--stats",
    item=click.STRING,
    metavar="STAT",
    help="Stats, in this order: count sum min max mean p50 p90 p95 p99 p999 or q<fraction> "
    "such as q0.75.",
    default_text=",".join(DEFAULT_STATS),
)
@list_option(
    "--match",
    "matchers",
    item=LABEL_PAIR,
    metavar="NAME=VALUE",
    help="Only series whose label NAME is VALUE (exact).",
)
@list_option(
    "--group-by",
    item=click.STRING,
    metavar="LABEL",
    help="One result per value of LABEL (one column each).",
)
@output_option
def query(
    connection: Connection,
    app: str,
    metric: str,
    since: int,
    start: int | None,
    end: int | None,
    step: int,
    stats: tuple[str, ...],
    matchers: tuple[tuple[str, str], ...],
    group_by: tuple[str, ...],
    output: str,
) -> None:
    """Per-step statistics of a metric, over one range.

    \b
    Examples:
      metaas query --app shop --metric router.latency_ms --since 30m --step 5m \\
          --stats count,p50,p99 --group-by status,dyno
      metaas query --app shop --metric router.latency_ms --start now-2h --end now-1h -o csv

    An empty answer prints nothing (exit status 0) and says on stderr what
    the app has, and that samples become queryable within the server's flush
    interval (10 s by default) after they are written.
    """
    # Buckets on multiples of the step, as a dashboard (or influx's windows)
    # aligns them: they read better, and whole-hour steps are then answered
    # from hourly rollups. An absolute --start is taken as given.
    span = resolve_range(since, start, end, time.time_ns() // 1_000_000, align_ms=step)
    with connection.calls(), connection.open() as client:
        result = client.query_range(
            app,
            metric,
            span.start_ms,
            span.end_ms,
            step=step,
            stats=stats or DEFAULT_STATS,
            matchers=dict(matchers),
            group_by=group_by,
        )
        hint = "" if result.series else no_data_hint(client, app, metric, dict(matchers), span)
    if output == "json":
        click.echo(json.dumps(as_json(result), indent=2))
    elif result.series or output != "table":
        title = (
            f"{app} {metric}, step {format_duration(step)}, {{date}}UTC, "
            f"served by {result.served_by}"
        )
        emit(frame_of(result, group_by), output, title)
    if hint:
        click.echo(f"no data (served by {result.served_by})", err=True)
        click.echo(f"hint: {hint}", err=True)


def frame_of(result: QueryResult, group_by: Sequence[str]) -> Frame:
    """One row per bucket of each group: its time, a column per group-by
    label, then a column per stat."""
    names = list(result.series[0].stats) if result.series else []
    times: list[int] = []
    labels: dict[str, list[str]] = {label: [] for label in group_by}
    values: dict[str, list[int | float]] = {name: [] for name in names}
    for series in result.series:
        times.extend(series.times_ms)
        for label, texts in labels.items():
            texts.extend([series.labels.get(label, "")] * len(series.times_ms))
        for name, numbers in values.items():
            numbers.extend(series.stats[name])
    return Frame(
        [
            Column("time", Kind.TIME, times),
            *(Column(label, Kind.TEXT, cells) for label, cells in labels.items()),
            *(Column(name, Kind.NUMBER, cells) for name, cells in values.items()),
        ],
        keys=1 + len(group_by),
    )


def as_json(result: QueryResult) -> dict[str, object]:
    return {
        "served_by": result.served_by,
        "series": [
            {
                "labels": dict(s.labels),
                "times_ms": list(s.times_ms),
                "stats": {k: [json_number(x) for x in v] for k, v in s.stats.items()},
            }
            for s in result.series
        ],
    }


def no_data_hint(
    client: Client, app: str, metric: str, matchers: Mapping[str, str], span: Range
) -> str:
    """Why a query may have found nothing: the app has no data in the range,
    or not this metric, or no series the matchers select."""
    try:
        listed = client.list_series(app, span.start_ms, span.end_ms)
    except MetaasError:
        return f"{FLUSH_HINT}; `metaas series --app {app}` lists its metrics"
    if not listed.series:
        return f"{app} has no data {span}: check the app's name; {FLUSH_HINT}"
    if metric not in listed.metrics:
        shown = ", ".join(listed.metrics[:5]) + (", ..." if len(listed.metrics) > 5 else "")
        return (
            f"{app} has no metric {metric!r} {span}, it has {shown}: "
            f"`metaas series --app {app}` lists them with their labels; {FLUSH_HINT}"
        )
    if matchers:
        selected = ",".join(f"{k}={v}" for k, v in matchers.items())
        return (
            f"no series of {metric} has --match {selected}: `metaas series --app {app} "
            f"--metric {metric}` lists its labels; {FLUSH_HINT}"
        )
    return FLUSH_HINT
