"""``metaas migration``: status, verify (and repair), report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import click
from google.protobuf import json_format
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from metaas.client import Client
from metaas.server.cli._client import Connection, client_options
from metaas.server.cli._errors import Found, server_errors
from metaas.server.cli._params import DURATION, TIMESTAMP
from metaas.server.migration.digest import (
    AppStage,
    apps_of,
    group_mismatches,
    other_apps_stage,
    repair_hints,
)
from metaas.server.migration.report import render
from metaas.v1 import migration_pb2

_NOT_CONFIGURED = (
    "not configured: this server reads and writes {backend} only "
    "(serve with --migration-target / METAAS_MIGRATION_TARGET to start one)"
)


@click.group()
def migration() -> None:
    """Inspect and check a storage migration (admin)."""


@migration.command()
@client_options
@click.option("--app", default="", help="Also show this app's stage and check ratio.")
@click.option(
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    help="table: a summary for people; json: GetMigrationStatus with the proto's field names.",
)
def status(connection: Connection, app: str, output: str) -> None:
    """Show the migration: backends, each app's stage, traffic, errors and
    latency over the window, recent mismatches (grouped), fallbacks, ingest
    problems and the flags in force."""
    with connection.open() as client, server_errors():
        response = client.migration_status(app)
        if output == "json":
            click.echo(
                json_format.MessageToJson(
                    response,
                    preserving_proto_field_name=True,
                    always_print_fields_with_no_presence=True,
                )
            )
            return
        stages = _stages(client, response)
    click.echo("\n".join(_status_lines(response, stages)))


def _stages(client: Client, status: migration_pb2.GetMigrationStatusResponse) -> list[AppStage]:
    """Each app the status mentions, with its stage as the server evaluates it."""
    if not status.migration_enabled:
        return []
    return [
        AppStage.of(status if app == status.app else client.migration_status(app))
        for app in apps_of(status)
    ]


def _status_lines(
    status: migration_pb2.GetMigrationStatusResponse, stages: Sequence[AppStage]
) -> list[str]:
    if not status.migration_enabled:
        return [
            "migration  " + _NOT_CONFIGURED.format(backend=status.old_backend or "one backend"),
            "",
            *_backend_lines(status),
            "",
            *_problem_lines(status.ingest_problems),
            *_kafka_lines(status.kafka_partitions),
        ]
    share = f" ({100 * status.mismatches / status.comparisons:.1f}%)" if status.comparisons else ""
    lines = [
        f"migration    on: old {status.old_backend} → new {status.new_backend}",
        f"window       {status.window_seconds} s: {status.comparisons} comparisons, "
        f"{status.mismatches} mismatches{share}",
    ]
    if status.app:
        lines.append(
            f"app          {status.app}: stage {status.stage}, check ratio {status.check_ratio:g}"
        )
    lines += ["", *_stage_lines(status, stages), "", *_backend_lines(status), ""]
    groups = group_mismatches(status.recent_mismatches)
    if groups:
        lines.append(
            f"recent mismatches ({len(status.recent_mismatches)}, "
            f"in {len(groups)} group{'s' if len(groups) != 1 else ''}):"
        )
        rows = [
            [g.app, g.metric, g.kind, str(g.count), ", ".join(g.stages), _time(g.last_ms)]
            for g in groups
        ]
        header, *table = _table(
            ["app", "metric", "difference", "count", "stage", "last seen"], rows, {3}
        )
        lines.append(header)
        for group, line in zip(groups, table, strict=True):
            lines.append(line)
            lines += [f"      e.g. {diff}" for diff in group.example[:2]]
    else:
        lines.append("recent mismatches  none")
    for hint in repair_hints(groups, stages):
        lines.append(f"hint: {hint.text}: {hint.command}")
    lines.append("")
    if status.fallbacks:
        lines.append("fallbacks (reads served by the old backend):")
        lines += _table(
            ["app", "stage", "since", "reason"],
            [[f.app, f.stage, _time(f.since_ms), f.reason] for f in status.fallbacks],
        )
    else:
        lines.append("fallbacks  none")
    lines += _problem_lines(status.ingest_problems)
    lines += _kafka_lines(status.kafka_partitions)
    lines += ["", *_flag_lines(status.flags)]
    return lines


def _stage_lines(
    status: migration_pb2.GetMigrationStatusResponse, stages: Sequence[AppStage]
) -> list[str]:
    fallbacks = {f.app for f in status.fallbacks}
    rows = [
        [s.app, s.stage, f"{s.check_ratio:g}", "yes" if s.app in fallbacks else ""] for s in stages
    ]
    other = other_apps_stage(status.flags)
    if other is not None:
        rows.append(["(every other app)", other, "", ""])
    if not rows:
        return ["apps  none named in the flags or seen in a mismatch"]
    return ["apps:", *_table(["app", "stage", "check ratio", "fallback"], rows)]


def _backend_lines(status: migration_pb2.GetMigrationStatusResponse) -> list[str]:
    if not status.backends:
        return [f"backends  no calls in the last {status.window_seconds} s"]
    rows = [
        [
            b.role,
            b.backend,
            str(b.reads),
            str(b.read_errors),
            str(b.writes),
            str(b.write_errors),
            f"{b.latency_p50_ms:.2f}",
            f"{b.latency_p95_ms:.2f}",
            f"{b.latency_p99_ms:.2f}",
            f"{b.write_lag_seconds:.1f}",
        ]
        for b in status.backends
    ]
    headers = ["role", "backend", "reads", "read errors", "writes", "write errors"]
    headers += ["p50 ms", "p95 ms", "p99 ms", "write lag s"]
    return [
        f"backends (last {status.window_seconds} s):",
        *_table(headers, rows, set(range(2, 10))),
    ]


def _problem_lines(problems: Sequence[str]) -> list[str]:
    if not problems:
        return ["ingest problems  none"]
    return ["ingest problems:", *(f"  {p}" for p in problems)]


def _kafka_lines(partitions: Sequence[migration_pb2.KafkaPartition]) -> list[str]:
    """The Kafka partitions this server consumes, if any, with their lag."""
    if not partitions:
        return []
    rows = [
        [
            p.topic,
            str(p.partition),
            str(p.committed_offset),
            str(p.end_offset),
            str(p.lag),
            "paused" if p.paused else "",
        ]
        for p in partitions
    ]
    total = sum(p.lag for p in partitions)
    return [
        f"kafka partitions ({len(partitions)}, lag {total} messages):",
        *_table(["topic", "partition", "committed", "end", "lag", ""], rows, {1, 2, 3, 4}),
    ]


def _flag_lines(flags: str) -> list[str]:
    text = flags.rstrip("\n")
    if "\n" not in text:
        return [f"flags  {text or '(none)'}"]
    return ["flags (the flag file in force):", *(f"    {line}" for line in text.splitlines())]


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int] | None = None
) -> list[str]:
    """Rows under their headers, two spaces apart, indented; nothing is cut."""
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        shown = [
            cell.rjust(width) if right and i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return ("  " + "  ".join(shown)).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


@migration.command()
@client_options
@click.option("--app", required=True)
@click.option("--since", type=DURATION, default="1d", help="Range ending now, e.g. 6h, 7d.")
@click.option("--start", type=TIMESTAMP, help="Range start; overrides --since.")
@click.option("--end", type=TIMESTAMP, help="Range end, exclusive (default: now).")
@click.option("--metric", "metrics", multiple=True, help="Only this metric (repeatable).")
@click.option("--repair", is_flag=True, help="Copy the authoritative side over the other.")
@click.option(
    "--max-diffs",
    type=click.IntRange(min=0),
    default=10,
    help="Show at most this many differences (the server sends the first 10).",
)
def verify(
    connection: Connection,
    app: str,
    since: int,
    start: int | None,
    end: int | None,
    metrics: tuple[str, ...],
    repair: bool,
    max_diffs: int,
) -> None:
    """Compare both backends over a range (and repair), with a progress bar.

    Exit status 1 when they differ (and --repair is not given); 3 when the
    server refuses, e.g. no migration is configured; 4 when it is unreachable."""
    end_ms = end if end is not None else time.time_ns() // 1_000_000
    start_ms = start if start is not None else end_ms - since
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    last = None
    # The bar goes to stderr, so stdout holds only the result.
    with (
        connection.open(timeout=3600) as client,
        Progress(*columns, console=Console(stderr=True)) as progress,
        server_errors(),
    ):
        task = progress.add_task("series", total=None)
        for last in client.verify_range(
            app, start_ms, end_ms, repair=repair, metrics=metrics, timeout=3600
        ):
            progress.update(task, total=last.series_total, completed=last.series_checked)
    if last is None:
        raise click.ClickException("the server sent no progress")
    if last.series_total == 0:
        click.echo(
            f"nothing to verify: neither backend has series of app {app}"
            f"{' (metrics ' + ', '.join(metrics) + ')' if metrics else ''} from "
            f"{_time(start_ms)} to {_time(end_ms)} UTC (check --app, --metric and the range)",
            err=True,
        )
        return
    for line in _verify_lines(last, max_diffs):
        click.echo(line)
    if last.partials_mismatched and not repair:
        raise Found(
            f"backends differ: {last.partials_mismatched} of {last.partials_compared} "
            "partials; --repair copies the authoritative side over the other"
        )


def _verify_lines(result: migration_pb2.VerifyRangeResponse, max_diffs: int) -> list[str]:
    lines = [
        f"authoritative: {result.authoritative_backend}; {result.series_checked} series, "
        f"partials compared {result.partials_compared}, mismatched "
        f"{result.partials_mismatched}, repaired {result.partials_repaired}"
    ]
    shown = list(result.samples[:max_diffs])
    lines += [f"  {sample}" for sample in shown]
    left_out = result.partials_mismatched - len(shown)
    if left_out > 0:
        lines.append(f"  ... and {left_out} more")
    return lines


@migration.command()
@client_options
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default="report.html")
def report(
    connection: Connection,
    out: Path,
) -> None:
    """Write a self-contained HTML report of the migration: each app's stage,
    latency, error and consistency charts, grouped mismatches."""
    with connection.open() as client, server_errors():
        response = client.migration_status(include_history=True)
        stages = _stages(client, response)
    out.write_text(render(response, generated_at=datetime.now(UTC), apps=stages))
    click.echo(f"wrote {out}")
    if not response.migration_enabled:
        click.echo(
            "migration is not configured on this server: the report says only that", err=True
        )
