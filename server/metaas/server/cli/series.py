"""``metaas series``: the metrics and label sets an app has data for."""

from __future__ import annotations

import json
import time

import click

from metaas.client import Client, SeriesList
from metaas.server.cli._client import Connection, client_options
from metaas.server.cli._output import Column, Frame, Kind, emit, output_option
from metaas.server.cli._params import Command, Range, range_options, resolve_range
from metaas.server.cli.query import FLUSH_HINT


@click.command(cls=Command)
@client_options
@click.option("--app", required=True, help="The app whose series to list.")
@click.option("--metric", default="", help="Only this metric's series.  [default: every metric]")
@range_options("1h")
@output_option
def series(
    connection: Connection,
    app: str,
    metric: str,
    since: int,
    start: int | None,
    end: int | None,
    output: str,
) -> None:
    """The metrics of an app and the label sets of each, with data in a range.

    It tells a wrong metric or app name from no traffic: what is listed here
    can be queried. The labels of a series are written as --match takes them.

    \b
    Examples:
      metaas series --app shop
      metaas series --app shop --metric router.latency_ms --since 1d -o csv
    """
    span = resolve_range(since, start, end, time.time_ns() // 1_000_000)
    with connection.calls(), connection.open() as client:
        listed = client.list_series(app, span.start_ms, span.end_ms, metric=metric or None)
        hint = "" if listed.series else _empty_hint(client, app, metric, span)
    if output == "json":
        body = {
            "app": app,
            "metrics": list(listed.metrics),
            "series": [{"metric": s.metric, "labels": dict(s.labels)} for s in listed.series],
        }
        click.echo(json.dumps(body, indent=2))
    elif listed.series or output != "table":
        emit(_frame(listed, wide=output != "table"), output, _title(app, listed, span))
    if hint:
        click.echo(f"no series of {app}{f' {metric}' if metric else ''} {span}", err=True)
        click.echo(f"hint: {hint}", err=True)


def _frame(listed: SeriesList, *, wide: bool) -> Frame:
    """A row per series: its metric, then its labels in one column as
    --match takes them, or (``wide``) a column per label name."""
    metrics = Column("metric", Kind.TEXT, [s.metric for s in listed.series])
    if not wide:
        labels = [",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) for s in listed.series]
        return Frame([metrics, Column("labels", Kind.TEXT, labels)], keys=2)
    names = sorted({name for s in listed.series for name in s.labels})
    columns = [Column(n, Kind.TEXT, [s.labels.get(n, "") for s in listed.series]) for n in names]
    return Frame([metrics, *columns], keys=1 + len(names))


def _title(app: str, listed: SeriesList, span: Range) -> str:
    metrics = len(listed.metrics)
    counted = f"{metrics} metric{'s' * (metrics != 1)}, {len(listed.series)} series"
    return f"{app}: {counted} {span}"


def _empty_hint(client: Client, app: str, metric: str, span: Range) -> str:
    if metric:
        others = client.list_series(app, span.start_ms, span.end_ms).metrics
        if others:
            return f"{app} has other metrics: {', '.join(others)}; {FLUSH_HINT}"
    return f"check the app's name, or look further back with --since; {FLUSH_HINT}"
