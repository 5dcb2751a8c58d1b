"""Commands that work on a backend directly: ``schema apply``, ``rollups
rebuild`` and ``views rebuild``. Their ``--storage``, ``--retention-days`` and
``--views`` are the settings ``metaas serve`` declares."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol, TypeVar

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
        click.echo(asyncio.run(apply_schema(storage, StorageContext(retention.retention_ms))))


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
    done, written = _run_rebuild(
        storage,
        retention_days,
        lambda opened: rebuild(opened, app, start_ms, end_ms, metrics=metrics),
        lambda step: step.rollups_written,
    )
    click.echo(f"rebuilt {written} hourly rollups over {done} metric-hours of app {app}")


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
    done, written = _run_rebuild(
        storage,
        retention_days,
        lambda opened: rebuild(opened, app, start_ms, end_ms, projections, metrics=metrics),
        lambda step: step.partials_written,
    )
    click.echo(f"rebuilt {written} view partials over {done} metric-hours of app {app}")


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


def _run_rebuild(
    storage: str,
    retention_days: int,
    rebuild: Callable[[Storage], AsyncIterator[_P]],
    written_of: Callable[[_P], int],
) -> tuple[int, int]:
    """Run ``rebuild`` on the opened ``storage`` with a progress bar over its
    metric-hours; return (metric-hours done, partials written)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from metaas.server.storage import StorageContext, open_storage

    async def run() -> tuple[int, int]:
        retention = build(RetentionConfig, {_RETENTION_DAYS.name: retention_days})
        opened = await open_storage(storage, StorageContext(retention.retention_ms))
        columns = (TextColumn("metric-hours"), BarColumn(), MofNCompleteColumn())
        written = done = 0
        try:
            with Progress(*columns) as bar:
                task = bar.add_task("rebuild", total=None)
                async for step in rebuild(opened):
                    bar.update(task, total=step.hours_total, completed=step.hours_done)
                    written, done = written_of(step), step.hours_done
        finally:
            await opened.close()
        return done, written

    with setting_errors(), storage_errors():
        return asyncio.run(run())
