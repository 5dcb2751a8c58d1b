"""Entry point of the ``metaas`` command."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol, TypeVar

import click

from metaas.client import DEFAULT_TARGET
from metaas.server.cli._params import DURATION, TIMESTAMP
from metaas.server.cli.demo import demo
from metaas.server.cli.migration import migration
from metaas.server.cli.query import query
from metaas.server.cli.write import write
from metaas.server.config import (
    CodecConfig,
    ConfigError,
    IngestConfig,
    LimitsConfig,
    MigrationConfig,
    QueryConfig,
    RetentionConfig,
    SecurityConfig,
    ServerConfig,
    Settings,
    ViewsConfig,
)
from metaas.server.storage.base import Storage
from metaas.server.storage.errors import StorageError

_DEFAULTS = Settings()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="metaas")
def main() -> None:
    """metaas: per-minute metric distributions per app, over gRPC."""


@main.command()
@click.option(
    "--listen",
    envvar="METAAS_LISTEN",
    default=_DEFAULTS.server.listen,
    help="HOST:PORT to serve gRPC on. [env METAAS_LISTEN]",
)
@click.option(
    "--storage",
    envvar="METAAS_STORAGE",
    default=_DEFAULTS.storage_url,
    help="Storage URL: sqlite:///path.db [env METAAS_STORAGE]",
)
@click.option(
    "--wal-dir",
    envvar="METAAS_WAL_DIR",
    type=click.Path(path_type=Path),
    default=_DEFAULTS.ingest.wal_dir,
    help="Write-ahead log directory. [env METAAS_WAL_DIR]",
)
@click.option(
    "--flush-interval-s",
    envvar="METAAS_FLUSH_INTERVAL_S",
    type=float,
    default=_DEFAULTS.ingest.flush_interval_s,
    help="Seconds between flushes to storage: the most a write waits to be "
    "queryable. [env METAAS_FLUSH_INTERVAL_S]",
)
@click.option(
    "--retention-days",
    envvar="METAAS_RETENTION_DAYS",
    type=int,
    default=_DEFAULTS.retention.days,
    help="Days of data kept. [env METAAS_RETENTION_DAYS]",
)
@click.option(
    "--idempotency-window-s",
    envvar="METAAS_IDEMPOTENCY_WINDOW_S",
    type=float,
    default=_DEFAULTS.ingest.idempotency_window_s,
    help="How long idempotency keys are remembered. [env METAAS_IDEMPOTENCY_WINDOW_S]",
)
@click.option(
    "--idempotency-max-bytes",
    envvar="METAAS_IDEMPOTENCY_MAX_BYTES",
    type=int,
    default=_DEFAULTS.ingest.idempotency_max_bytes,
    help="Memory for remembered idempotency keys; when full, new keyed writes get "
    "RESOURCE_EXHAUSTED. [env METAAS_IDEMPOTENCY_MAX_BYTES]",
)
@click.option(
    "--shutdown-grace-s",
    envvar="METAAS_SHUTDOWN_GRACE_S",
    type=float,
    default=_DEFAULTS.server.shutdown_grace_s,
    help="Seconds SIGTERM lets in-flight RPCs finish. [env METAAS_SHUTDOWN_GRACE_S]",
)
@click.option(
    "--reflection/--no-reflection",
    envvar="METAAS_REFLECTION",
    default=True,
    help="Serve gRPC reflection (for grpcurl). [env METAAS_REFLECTION]",
)
@click.option(
    "--max-inflight-requests",
    envvar="METAAS_MAX_INFLIGHT_REQUESTS",
    type=click.IntRange(1, 1_000_000),
    default=_DEFAULTS.limits.max_inflight_requests,
    help="Concurrent RPCs before RESOURCE_EXHAUSTED. [env METAAS_MAX_INFLIGHT_REQUESTS]",
)
@click.option(
    "--max-inflight-per-caller",
    envvar="METAAS_MAX_INFLIGHT_PER_CALLER",
    type=int,
    default=_DEFAULTS.limits.max_inflight_per_caller,
    help="Concurrent RPCs one caller (token or certificate) may hold. "
    "[env METAAS_MAX_INFLIGHT_PER_CALLER]",
)
@click.option(
    "--max-inflight-bytes",
    envvar="METAAS_MAX_INFLIGHT_BYTES",
    type=int,
    default=_DEFAULTS.limits.max_inflight_bytes,
    help="Request bytes held at once over all RPCs; past it, messages are refused "
    "before they are parsed. [env METAAS_MAX_INFLIGHT_BYTES]",
)
@click.option(
    "--stream-idle-timeout-s",
    envvar="METAAS_STREAM_IDLE_TIMEOUT_S",
    type=float,
    default=_DEFAULTS.limits.stream_idle_timeout_s,
    help="A WriteStream with no message for this long is ended. [env METAAS_STREAM_IDLE_TIMEOUT_S]",
)
@click.option(
    "--max-backlog-bytes",
    envvar="METAAS_MAX_BACKLOG_BYTES",
    type=click.IntRange(1024),
    default=_DEFAULTS.ingest.max_backlog_bytes,
    help="Acknowledged bytes not yet stored before writes get UNAVAILABLE. "
    "[env METAAS_MAX_BACKLOG_BYTES]",
)
@click.option(
    "--max-aggregate-bytes",
    envvar="METAAS_MAX_AGGREGATE_BYTES",
    type=int,
    default=_DEFAULTS.ingest.max_aggregate_bytes,
    help="Estimated memory of aggregates not yet stored before writes get UNAVAILABLE "
    "(a backfill waits for storage). [env METAAS_MAX_AGGREGATE_BYTES]",
)
@click.option(
    "--migration-target",
    envvar="METAAS_MIGRATION_TARGET",
    help="Storage URL of the backend to migrate to; turns migration on. "
    "[env METAAS_MIGRATION_TARGET]",
)
@click.option(
    "--flags",
    envvar="METAAS_FLAGS",
    type=click.Path(path_type=Path),
    help="flagd flag file with migration-stage and migration-check-ratio. [env METAAS_FLAGS]",
)
@click.option(
    "--flags-provider",
    envvar="METAAS_FLAGS_PROVIDER",
    help="flagd-file (default), flagd (a flagd service, FLAGD_* variables), or "
    "module:factory returning an OpenFeature provider. [env METAAS_FLAGS_PROVIDER]",
)
@click.option(
    "--shadow-timeout-s",
    envvar="METAAS_SHADOW_TIMEOUT_S",
    type=float,
    default=_DEFAULTS.migration.shadow_timeout_s,
    help="Longest wait for a shadow read. [env METAAS_SHADOW_TIMEOUT_S]",
)
@click.option(
    "--rollups-from",
    envvar="METAAS_ROLLUPS_FROM",
    type=TIMESTAMP,
    help="Hours before this time (ISO 8601 or Unix ms) are read from minutes, not "
    "hourly rollups: for data stored before rollups existed, until `metaas rollups "
    "rebuild` has run for every app. [env METAAS_ROLLUPS_FROM]",
)
@click.option(
    "--views",
    envvar="METAAS_VIEWS",
    default=",".join(_DEFAULTS.views.projections),
    help="Labels whose projection is aggregated at ingest beside the whole metric, so "
    "queries grouped or matched by one of them read one view instead of every series "
    "(comma-separated, or none). [env METAAS_VIEWS]",
)
@click.option(
    "--views-from",
    envvar="METAAS_VIEWS_FROM",
    type=TIMESTAMP,
    help="Views hold data from this time on (ISO 8601 or Unix ms); earlier times are "
    "read from series: set it to the upgrade time on data stored before views existed, "
    "until `metaas views rebuild` has run for every app. [env METAAS_VIEWS_FROM]",
)
@click.option(
    "--shadow-workers",
    envvar="METAAS_SHADOW_WORKERS",
    type=int,
    default=_DEFAULTS.migration.shadow_workers,
    show_default=True,
    help="Worker processes for shadow reads, so they use other cores than the "
    "serving loop (0: on the serving loop). [env METAAS_SHADOW_WORKERS]",
)
@click.option(
    "--compare-tolerance",
    envvar="METAAS_COMPARE_TOLERANCE",
    type=float,
    default=_DEFAULTS.migration.relative_tolerance,
    help="Relative difference below which values match. [env METAAS_COMPARE_TOLERANCE]",
)
@click.option(
    "--compare-ignore-newest-minutes",
    envvar="METAAS_COMPARE_IGNORE_NEWEST_MINUTES",
    type=int,
    default=_DEFAULTS.migration.ignore_newest_minutes,
    help="Newest minutes left out of comparisons. [env METAAS_COMPARE_IGNORE_NEWEST_MINUTES]",
)
@click.option(
    "--guard-error-rate",
    envvar="METAAS_GUARD_ERROR_RATE",
    type=float,
    default=_DEFAULTS.migration.guard_error_rate,
    help="In live/rampdown, the new backend's error rate that makes an app's reads fall "
    "back to the old one. [env METAAS_GUARD_ERROR_RATE]",
)
@click.option(
    "--guard-mismatch-rate",
    envvar="METAAS_GUARD_MISMATCH_RATE",
    type=float,
    default=_DEFAULTS.migration.guard_mismatch_rate,
    help="The mismatch rate that does the same. [env METAAS_GUARD_MISMATCH_RATE]",
)
@click.option(
    "--guard-min-samples",
    envvar="METAAS_GUARD_MIN_SAMPLES",
    type=click.IntRange(1),
    default=_DEFAULTS.migration.guard_min_samples,
    help="Reads or comparisons needed before the guard rail may trip. "
    "[env METAAS_GUARD_MIN_SAMPLES]",
)
@click.option(
    "--migration-window-s",
    envvar="METAAS_MIGRATION_WINDOW_S",
    type=float,
    default=_DEFAULTS.migration.window_s,
    help="Sliding window of the status and the guard rail. [env METAAS_MIGRATION_WINDOW_S]",
)
@click.option(
    "--tls-cert",
    envvar="METAAS_TLS_CERT",
    type=click.Path(path_type=Path),
    help="Server certificate (PEM); enables TLS. [env METAAS_TLS_CERT]",
)
@click.option(
    "--tls-key",
    envvar="METAAS_TLS_KEY",
    type=click.Path(path_type=Path),
    help="Server private key (PEM). [env METAAS_TLS_KEY]",
)
@click.option(
    "--tls-client-ca",
    envvar="METAAS_TLS_CLIENT_CA",
    type=click.Path(path_type=Path),
    help="CA bundle for client certificates; enables mutual TLS. [env METAAS_TLS_CLIENT_CA]",
)
@click.option(
    "--auth-tokens",
    envvar="METAAS_AUTH_TOKENS",
    type=click.Path(path_type=Path),
    help="Access file of token hashes and certificate names. [env METAAS_AUTH_TOKENS]",
)
@click.option(
    "--insecure",
    envvar="METAAS_INSECURE",
    is_flag=True,
    help="Allow a non-loopback --listen without authentication. [env METAAS_INSECURE]",
)
@click.option(
    "--compression",
    envvar="METAAS_COMPRESSION",
    default=_DEFAULTS.codec.compression,
    type=click.Choice(["zstd", "gzip"]),
    help="Codec for items above the threshold. [env METAAS_COMPRESSION]",
)
@click.option(
    "--compression-threshold-bytes",
    envvar="METAAS_COMPRESSION_THRESHOLD_BYTES",
    type=int,
    default=_DEFAULTS.codec.threshold_bytes,
    help="Items larger than this are compressed. [env METAAS_COMPRESSION_THRESHOLD_BYTES]",
)
@click.option(
    "--distribution-encoding",
    envvar="METAAS_DISTRIBUTION_ENCODING",
    type=click.IntRange(1, 2),
    default=_DEFAULTS.codec.distribution_encoding,
    show_default=True,
    help="Encoding of the distributions written: 2 (compact) or 1 (read by releases "
    "before 2, for a rolling upgrade); both are read. [env METAAS_DISTRIBUTION_ENCODING]",
)
@click.option(
    "--log-level",
    envvar="METAAS_LOG_LEVEL",
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="[env METAAS_LOG_LEVEL]",
)
def serve(
    listen: str,
    storage: str,
    wal_dir: Path,
    flush_interval_s: float,
    retention_days: int,
    idempotency_window_s: float,
    idempotency_max_bytes: int,
    shutdown_grace_s: float,
    reflection: bool,
    max_inflight_requests: int,
    max_inflight_per_caller: int,
    max_inflight_bytes: int,
    stream_idle_timeout_s: float,
    max_backlog_bytes: int,
    max_aggregate_bytes: int,
    migration_target: str | None,
    flags: Path | None,
    flags_provider: str | None,
    shadow_timeout_s: float,
    rollups_from: int | None,
    views: str,
    views_from: int | None,
    shadow_workers: int,
    compare_tolerance: float,
    compare_ignore_newest_minutes: int,
    guard_error_rate: float,
    guard_mismatch_rate: float,
    guard_min_samples: int,
    migration_window_s: float,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    auth_tokens: Path | None,
    insecure: bool,
    compression: str,
    compression_threshold_bytes: int,
    distribution_encoding: int,
    log_level: str,
) -> None:
    """Run the server until SIGTERM or Ctrl-C (then drain and flush)."""
    from metaas.server.api.server import AddressInUse
    from metaas.server.app import serve as run
    from metaas.server.ingest.wal import WalLocked
    from metaas.server.telemetry import from_environment

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = Settings(
            storage_url=storage,
            server=ServerConfig(
                listen=listen, reflection=reflection, shutdown_grace_s=shutdown_grace_s
            ),
            ingest=IngestConfig(
                wal_dir=wal_dir,
                flush_interval_s=flush_interval_s,
                idempotency_window_s=idempotency_window_s,
                idempotency_max_bytes=idempotency_max_bytes,
                max_backlog_bytes=max_backlog_bytes,
                max_aggregate_bytes=max_aggregate_bytes,
            ),
            limits=LimitsConfig(
                max_inflight_requests=max_inflight_requests,
                max_inflight_per_caller=max_inflight_per_caller,
                max_inflight_bytes=max_inflight_bytes,
                stream_idle_timeout_s=stream_idle_timeout_s,
            ),
            retention=RetentionConfig(days=retention_days),
            query=QueryConfig(rollups_from_ms=rollups_from or 0),
            views=ViewsConfig.parse(views, views_from or 0),
            codec=CodecConfig(
                compression,
                compression_threshold_bytes,
                distribution_encoding=distribution_encoding,
            ),
            security=SecurityConfig(tls_cert, tls_key, tls_client_ca, auth_tokens, insecure),
            migration=MigrationConfig(
                target_url=migration_target or None,
                flags_file=flags,
                flags_provider=flags_provider,
                shadow_timeout_s=shadow_timeout_s,
                shadow_workers=shadow_workers,
                relative_tolerance=compare_tolerance,
                ignore_newest_minutes=compare_ignore_newest_minutes,
                guard_error_rate=guard_error_rate,
                guard_mismatch_rate=guard_mismatch_rate,
                guard_min_samples=guard_min_samples,
                window_s=migration_window_s,
            ),
        )
        telemetry = from_environment()
    except ConfigError as error:
        raise click.UsageError(str(error)) from error
    try:
        asyncio.run(run(settings, telemetry))
    except ConfigError as error:
        raise click.UsageError(str(error)) from error
    except (AddressInUse, WalLocked) as error:
        raise click.ClickException(str(error)) from error
    except StorageError as error:
        raise click.ClickException(f"storage: {error}") from error


@main.group()
def schema() -> None:
    """Manage the storage schema (owned by the code)."""


@schema.command("apply")
@click.option(
    "--storage",
    envvar="METAAS_STORAGE",
    default=_DEFAULTS.storage_url,
    help="Storage URL. [env METAAS_STORAGE]",
)
@click.option(
    "--retention-days",
    envvar="METAAS_RETENTION_DAYS",
    type=int,
    default=_DEFAULTS.retention.days,
    help="Sets TTLs where the backend has them.",
)
def schema_apply(storage: str, retention_days: int) -> None:
    """Create or update tables, keyspaces and TTL settings; safe to re-run."""
    from metaas.server.storage import StorageContext, apply_schema

    try:
        context = StorageContext(RetentionConfig(days=retention_days).retention_ms)
        click.echo(asyncio.run(apply_schema(storage, context)))
    except ConfigError as error:
        raise click.UsageError(str(error)) from error
    except StorageError as error:
        raise click.ClickException(f"storage: {error}") from error


_F = TypeVar("_F", bound=Callable[..., None])


def _rebuild_options(command: _F) -> _F:
    """The options every ``rebuild`` command takes: where, which app, and
    which range and metrics."""
    options = (
        click.option(
            "--storage",
            envvar="METAAS_STORAGE",
            default=_DEFAULTS.storage_url,
            help="Storage URL. [env METAAS_STORAGE]",
        ),
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
        click.option(
            "--retention-days",
            envvar="METAAS_RETENTION_DAYS",
            type=int,
            default=_DEFAULTS.retention.days,
            help="Nothing older is read.",
        ),
    )
    for option in reversed(options):
        command = option(command)
    return command


@main.group()
def rollups() -> None:
    """Hourly rollups (what queries on whole hours read)."""


@rollups.command("rebuild")
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
        context = StorageContext(RetentionConfig(days=retention_days).retention_ms)
        opened = await open_storage(storage, context)
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

    try:
        return asyncio.run(run())
    except ConfigError as error:
        raise click.UsageError(str(error)) from error
    except StorageError as error:
        raise click.ClickException(f"storage: {error}") from error


@main.group()
def views() -> None:
    """Views: the aggregates kept at ingest for whole-app and per-label queries."""


@views.command("rebuild")
@_rebuild_options
@click.option(
    "--views",
    "projections",
    envvar="METAAS_VIEWS",
    default=",".join(_DEFAULTS.views.projections),
    help="The projected labels, as the servers use them. [env METAAS_VIEWS]",
)
def views_rebuild(
    storage: str,
    app: str,
    projections: str,
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

    try:
        config = ViewsConfig.parse(projections)
    except ConfigError as error:
        raise click.UsageError(str(error)) from error
    start_ms, end_ms = _rebuild_range(since, start, end)
    done, written = _run_rebuild(
        storage,
        retention_days,
        lambda opened: rebuild(opened, app, start_ms, end_ms, config.projections, metrics=metrics),
        lambda step: step.partials_written,
    )
    click.echo(f"rebuilt {written} view partials over {done} metric-hours of app {app}")


for command in (write, query, demo, migration):
    main.add_command(command)

__all__ = ["DEFAULT_TARGET", "main"]
