"""Commands that work on a backend directly: ``schema apply``, ``rollups
rebuild`` and ``views rebuild``. Their ``--storage``, ``--retention-days`` and
``--views`` are the settings ``metaas serve`` declares."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

import click

from metaas.server.cli._errors import setting_errors, storage_errors
from metaas.server.cli._options import SettingsCommand, setting_option
from metaas.server.cli._params import DURATION, TIMESTAMP
from metaas.server.config import RetentionConfig, Settings, ViewsConfig, build, setting_of
from metaas.server.storage.base import Storage

_STORAGE = setting_of(Settings, "storage_url")
_RETENTION_DAYS = setting_of(RetentionConfig, "days")
_VIEWS = setting_of(ViewsConfig, "projections")
_F = TypeVar("_F", bound=Callable[..., None])


@click.group()
def schema() -> None:
    """Manage the storage schema (owned by the code)."""


@schema.command("apply", cls=SettingsCommand)
@setting_option(_STORAGE)
@setting_option(
    _RETENTION_DAYS, help_text="Days of data kept: sets TTLs where the backend has them."
)
def schema_apply(storage: str, retention_days: int) -> None:
    """Create or update tables, keyspaces and TTL settings; safe to re-run."""
    from metaas.server.storage import StorageContext, apply_schema

    with setting_errors(), storage_errors():
        retention = build(RetentionConfig, {_RETENTION_DAYS.name: retention_days})
        sqlite_before = _sqlite_version(storage)
        done = asyncio.run(apply_schema(storage, StorageContext(retention.retention_ms)))
    click.echo(done if sqlite_before is None else _sqlite_applied(*sqlite_before))


def _sqlite_version(url: str) -> tuple[Path, int | None] | None:
    """For a SQLite URL, its file and the schema version it holds before
    ``schema apply`` (None: a new file, or one without metaas's tables)."""
    if urlsplit(url).scheme != "sqlite":
        return None
    from metaas.server.storage.sqlite import SqliteConfig

    path = SqliteConfig.from_url(url).path
    if not path.is_file() or path.stat().st_size == 0:
        return path, None
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as connection:
            row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
    except sqlite3.Error:
        return path, None
    return path, (row[0] if row else None)


def _sqlite_applied(path: Path, before: int | None) -> str:
    from metaas.server.storage.sqlite.schema import SCHEMA_VERSION

    where = path.resolve()
    if before is None:
        return f"created the sqlite schema (version {SCHEMA_VERSION}) in {where}"
    if before < SCHEMA_VERSION:
        return f"updated the sqlite schema from version {before} to {SCHEMA_VERSION} in {where}"
    return f"sqlite schema is current (version {SCHEMA_VERSION}) in {where}"


def _rebuild_options(command: _F) -> _F:
    """The options every ``rebuild`` command takes: where, which app, and
    which range and metrics."""
    options = (
        setting_option(_STORAGE),
        click.option("--app", required=True),
        click.option(
            "--since", type=DURATION, default="30d", help="Range ending now, e.g. 6h, 7d."
        ),
        click.option("--start", type=TIMESTAMP, help="Range start; overrides --since."),
        click.option(
            "--end",
            type=TIMESTAMP,
            help="Range end, exclusive (default: the start of the newest hour no server "
            "still holds).",
        ),
        click.option("--metric", "metrics", multiple=True, help="Only this metric (repeatable)."),
        setting_option(_RETENTION_DAYS, help_text="Days of data kept: nothing older is read."),
    )
    for option in reversed(options):
        command = option(command)
    return command


@click.group()
def rollups() -> None:
    """Hourly rollups (what queries on whole hours read)."""


@rollups.command("rebuild", cls=SettingsCommand)
@_rebuild_options
def rollups_rebuild(
    storage: str,
    app: str,
    since: int,
    start: int | None,
    end: int | None,
    metrics: tuple[str, ...],
    retention_days: int,
) -> None:
    """Rewrite an app's hourly rollups from its stored minutes, for data
    stored before rollups existed (every hour the range touches)."""
    from metaas.server.storage.rollups import rebuild

    start_ms, end_ms = _rebuild_range(since, start, end)
    rebuilt = _run_rebuild(
        storage,
        retention_days,
        (app, start_ms, end_ms),
        lambda opened: rebuild(opened, app, start_ms, end_ms, metrics=metrics),
        lambda step: step.rollups_written,
    )
    _report(rebuilt, "hourly rollups", app, metrics, start_ms, end_ms)


@click.group()
def views() -> None:
    """Views: the aggregates kept at ingest for whole-app and per-label queries."""


@views.command("rebuild", cls=SettingsCommand)
@_rebuild_options
@setting_option(_VIEWS, help_text="The projected labels, as the servers use them.")
def views_rebuild(
    storage: str,
    app: str,
    views: str,
    since: int,
    start: int | None,
    end: int | None,
    metrics: tuple[str, ...],
    retention_days: int,
) -> None:
    """Rewrite an app's views (minutes and hourly rollups) from its stored
    series, for data stored before views existed or before a label was
    added to --views (every hour the range touches)."""
    from metaas.server.storage.views import rebuild

    with setting_errors():
        projections = build(ViewsConfig, {_VIEWS.name: views}).projections
    start_ms, end_ms = _rebuild_range(since, start, end)
    rebuilt = _run_rebuild(
        storage,
        retention_days,
        (app, start_ms, end_ms),
        lambda opened: rebuild(opened, app, start_ms, end_ms, projections, metrics=metrics),
        lambda step: step.partials_written,
    )
    _report(rebuilt, "view partials", app, metrics, start_ms, end_ms)


def _rebuild_range(since: int, start: int | None, end: int | None) -> tuple[int, int]:
    """A rebuild's ``[start, end)``: the end defaults to the start of the
    newest hour no server still holds in memory."""
    from metaas.server.model import Resolution

    now_ms = time.time_ns() // 1_000_000
    # Servers keep an hour in memory until its last minute is 3 minutes old.
    end_ms = end if end is not None else Resolution.HOUR.floor(now_ms - 10 * 60_000)
    return (start if start is not None else now_ms - since), end_ms


_P = TypeVar("_P", bound="_HourlyProgress")


class _HourlyProgress(Protocol):
    hours_total: int
    hours_done: int


@dataclass(frozen=True, slots=True)
class _Rebuilt:
    """What a rebuild did: metric-hours in the range and those with stored
    minutes, partials written, and (when it wrote none) the app's metrics."""

    hours_total: int
    hours_with_data: int
    written: int
    metrics_found: tuple[str, ...] = ()


def _run_rebuild(
    storage: str,
    retention_days: int,
    scope: tuple[str, int, int],
    rebuild: Callable[[Storage], AsyncIterator[_P]],
    written_of: Callable[[_P], int],
) -> _Rebuilt:
    """Run ``rebuild`` on the opened ``storage`` with a progress bar over its
    metric-hours; when it writes nothing, list the metrics the app (of
    ``scope``: app, start, end) has in the range, to say why."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from metaas.server.model import Resolution, is_view
    from metaas.server.storage import StorageContext, open_storage

    app, start_ms, end_ms = scope

    async def run() -> _Rebuilt:
        retention = build(RetentionConfig, {_RETENTION_DAYS.name: retention_days})
        opened = await open_storage(storage, StorageContext(retention.retention_ms))
        columns = (TextColumn("metric-hours"), BarColumn(), MofNCompleteColumn())
        total = written = with_data = 0
        try:
            with Progress(*columns, console=Console(stderr=True)) as bar:
                task = bar.add_task("rebuild", total=None)
                async for step in rebuild(opened):
                    bar.update(task, total=step.hours_total, completed=step.hours_done)
                    # A metric-hour with stored minutes writes partials; an
                    # empty one writes none and is not counted.
                    with_data += written_of(step) > written
                    total, written = step.hours_total, written_of(step)
            found: tuple[str, ...] = ()
            if not with_data and start_ms < end_ms:
                listed = await opened.list_series(app, Resolution.HOUR.floor(start_ms), end_ms)
                found = tuple(sorted({s.metric for s in listed if not is_view(s.metric)}))
        finally:
            await opened.close()
        return _Rebuilt(total, with_data, written, found)

    with setting_errors(), storage_errors():
        return asyncio.run(run())


def _report(
    rebuilt: _Rebuilt,
    what: str,
    app: str,
    metrics: Sequence[str],
    start_ms: int,
    end_ms: int,
) -> None:
    """The count of what was rebuilt, or (exit status 0, on stderr) why
    nothing was."""
    if rebuilt.hours_with_data:
        click.echo(
            f"rebuilt {rebuilt.written} {what} over {rebuilt.hours_with_data} metric-hours "
            f"with stored minutes (of {rebuilt.hours_total} in the range) of app {app}"
        )
        return
    span = f"from {_time(start_ms)} to {_time(end_ms)} UTC"
    if end_ms <= start_ms:
        reason = (
            f"the range is empty: it ends at {_time(end_ms)} UTC, not after its start "
            f"{_time(start_ms)} UTC (without --end it ends at the newest hour no server "
            "still holds); give --since, --start or --end"
        )
    elif metrics and rebuilt.metrics_found:
        reason = (
            f"app {app} has no stored minutes of {', '.join(metrics)} {span}; "
            f"its metrics then: {', '.join(rebuilt.metrics_found)} (check --metric)"
        )
    elif rebuilt.metrics_found:
        reason = (
            f"app {app} has no stored minutes {span} in metrics {', '.join(rebuilt.metrics_found)}"
        )
    else:
        reason = (
            f"app {app} has no stored minutes {span} (check --app and --storage, "
            "and the range: --since, --start, --end)"
        )
    click.echo(f"rebuilt nothing: {reason}", err=True)


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")
