"""``metaas migration``: status, verify (and repair), report."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import click
from google.protobuf import json_format
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from metaas.client import MetaasError
from metaas.server.cli._client import Connection, client_options
from metaas.server.cli._params import DURATION, TIMESTAMP
from metaas.server.migration.report import render


@click.group()
def migration() -> None:
    """Inspect and check a storage migration (admin)."""


@migration.command()
@client_options
@click.option("--app", default="", help="Also show this app's stage and check ratio.")
def status(
    connection: Connection,
    app: str,
) -> None:
    """Print GetMigrationStatus as JSON."""
    with connection.open() as client:
        try:
            response = client.migration_status(app)
        except MetaasError as error:
            raise click.ClickException(str(error)) from error
    click.echo(json_format.MessageToJson(response, always_print_fields_with_no_presence=True))


@migration.command()
@client_options
@click.option("--app", required=True)
@click.option("--since", type=DURATION, default="1d", help="Range ending now, e.g. 6h, 7d.")
@click.option("--start", type=TIMESTAMP, help="Range start; overrides --since.")
@click.option("--end", type=TIMESTAMP, help="Range end, exclusive (default: now).")
@click.option("--metric", "metrics", multiple=True, help="Only this metric (repeatable).")
@click.option("--repair", is_flag=True, help="Copy the authoritative side over the other.")
def verify(
    connection: Connection,
    app: str,
    since: int,
    start: int | None,
    end: int | None,
    metrics: tuple[str, ...],
    repair: bool,
) -> None:
    """Compare both backends over a range (and repair), with a progress bar."""
    end_ms = end if end is not None else time.time_ns() // 1_000_000
    start_ms = start if start is not None else end_ms - since
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    last = None
    with (
        connection.open(timeout=3600) as client,
        Progress(*columns) as progress,
    ):
        task = progress.add_task("series", total=None)
        try:
            for last in client.verify_range(
                app, start_ms, end_ms, repair=repair, metrics=metrics, timeout=3600
            ):
                progress.update(task, total=last.series_total, completed=last.series_checked)
        except MetaasError as error:
            raise click.ClickException(str(error)) from error
    if last is None:
        raise click.ClickException("the server sent no progress")
    console = Console()
    console.print(
        f"authoritative: {last.authoritative_backend}; partials compared "
        f"{last.partials_compared}, mismatched {last.partials_mismatched}, "
        f"repaired {last.partials_repaired}"
    )
    for sample in last.samples:
        console.print(f"  {sample}", markup=False)
    if last.partials_mismatched and not repair:
        raise SystemExit(1)


@migration.command()
@client_options
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default="report.html")
def report(
    connection: Connection,
    out: Path,
) -> None:
    """Write a self-contained HTML report of the migration."""
    with connection.open() as client:
        try:
            response = client.migration_status(include_history=True)
        except MetaasError as error:
            raise click.ClickException(str(error)) from error
    out.write_text(render(response, generated_at=datetime.now(UTC)))
    click.echo(f"wrote {out}")
