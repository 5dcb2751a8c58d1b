"""Settings of the data path: ingest, retention, queries, views and the stored encoding."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from metaas.server.config._declaration import (
    SINCE_1970,
    Accepts,
    Kind,
    above,
    at_least,
    between,
    checked,
    one_of,
    setting,
    validate,
)
from metaas.server.model import DAY_MS

MAX_PROJECTIONS: Final = 8
# The label names a write accepts (api/validation.py).
_LABEL_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True, slots=True)
class IngestConfig:
    wal_dir: Path = setting(
        Path("data/wal"),
        "--wal-dir",
        "METAAS_WAL_DIR",
        "Write-ahead log directory.",
        kind=Kind.PATH,
    )
    flush_interval_s: float = setting(
        10.0,
        "--flush-interval-s",
        "METAAS_FLUSH_INTERVAL_S",
        "Seconds between flushes to storage: the longest a write waits to be queryable.",
        kind=Kind.NUMBER,
        accepts=between(0.05, 3600, "seconds"),
    )
    idempotency_window_s: float = setting(
        600.0,
        "--idempotency-window-s",
        "METAAS_IDEMPOTENCY_WINDOW_S",
        "How long idempotency keys are remembered (across restarts).",
        kind=Kind.NUMBER,
        accepts=above(0, "seconds"),
    )
    idempotency_max_bytes: int = setting(
        256 * 1024 * 1024,
        "--idempotency-max-bytes",
        "METAAS_IDEMPOTENCY_MAX_BYTES",
        "Memory for remembered idempotency keys; when full, new keyed writes get "
        "RESOURCE_EXHAUSTED (no key is forgotten early).",
        kind=Kind.INTEGER,
        accepts=at_least(1024, "bytes"),
    )
    # Minutes older than this (by sample time) leave memory after their flush;
    # a late sample for them is merged into the stored row instead.
    hot_minutes: int = checked(3, at_least(1, "minutes"))
    fsync: bool = True
    max_backlog_bytes: int = setting(
        1024 * 1024 * 1024,
        "--max-backlog-bytes",
        "METAAS_MAX_BACKLOG_BYTES",
        "Acknowledged bytes not yet stored before writes get UNAVAILABLE.",
        kind=Kind.INTEGER,
        accepts=at_least(1024, "bytes"),
    )
    # Past this, too, writes get UNAVAILABLE with a retry hint instead of
    # memory growing without limit while storage is behind.
    max_aggregates: int = checked(2_000_000, at_least(1, "aggregates"))
    max_aggregate_bytes: int = setting(
        512 * 1024 * 1024,
        "--max-aggregate-bytes",
        "METAAS_MAX_AGGREGATE_BYTES",
        "Estimated memory of the aggregates being built or waiting to be stored before "
        "writes get UNAVAILABLE: a backfill waits for storage.",
        kind=Kind.INTEGER,
        accepts=at_least(65536, "bytes"),
    )

    def __post_init__(self) -> None:
        validate(self)


def _optional_time(ms: int) -> int | None:
    return ms or None


@dataclass(frozen=True, slots=True)
class QueryConfig:
    # 0: every hour has its rollup.
    rollups_from_ms: int = setting(
        0,
        "--rollups-from",
        "METAAS_ROLLUPS_FROM",
        "Hours before this time (ISO 8601 or Unix ms) are read from minutes, not hourly "
        "rollups: set it to the upgrade time on Cassandra or DynamoDB data stored before "
        "rollups existed, until `metaas rollups rebuild` has run for every app.",
        kind=Kind.TIME,
        accepts=SINCE_1970,
        show=_optional_time,
    )

    def __post_init__(self) -> None:
        validate(self)


def _label_names(text: str) -> tuple[str, ...]:
    """``--views``: comma-separated label names, or ``none``."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    return () if names == ("none",) else names


def _are_projections(names: tuple[str, ...]) -> bool:
    return (
        len(names) <= MAX_PROJECTIONS
        and len(set(names)) == len(names)
        and all(_LABEL_NAME.fullmatch(n) for n in names)
    )


@dataclass(frozen=True, slots=True)
class ViewsConfig:
    """Aggregates kept at ingest beside each series' partials, for the
    queries dashboards ask (see docs/architecture.md, "Views"): the whole
    metric merged, always, and one projection per label named here."""

    projections: tuple[str, ...] = setting(
        ("status",),
        "--views",
        "METAAS_VIEWS",
        "Labels whose projection is aggregated at ingest beside the whole metric, so "
        "queries grouped or matched by one of them read one view instead of every series.",
        accepts=Accepts(
            f"at most {MAX_PROJECTIONS} distinct label names (each a letter or _, then "
            "letters, digits and _ . -, up to 64 characters), comma-separated, or none",
            _are_projections,
        ),
        parse=_label_names,
        show=",".join,
    )
    # 0: views hold every time.
    from_ms: int = setting(
        0,
        "--views-from",
        "METAAS_VIEWS_FROM",
        "Views hold data from this time on (ISO 8601 or Unix ms); earlier times are read "
        "from series: set it to the upgrade time on data stored before views existed, "
        "until `metaas views rebuild` has run for every app.",
        kind=Kind.TIME,
        accepts=SINCE_1970,
        show=_optional_time,
    )

    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def parse(cls, text: str, from_ms: int = 0) -> ViewsConfig:
        """``--views``: comma-separated label names, or ``none``."""
        return cls(_label_names(text), from_ms)


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    days: int = setting(
        30,
        "--retention-days",
        "METAAS_RETENTION_DAYS",
        "Days of data kept: older data is refused on write and never returned.",
        kind=Kind.INTEGER,
        accepts=between(1, 3650, "days"),
    )

    def __post_init__(self) -> None:
        validate(self)

    @property
    def retention_ms(self) -> int:
        return self.days * DAY_MS


@dataclass(frozen=True, slots=True)
class CodecConfig:
    """Item compression, and the encoding of the distributions written."""

    compression: str = setting(
        "zstd",
        "--compression",
        "METAAS_COMPRESSION",
        "Codec for stored items above the threshold (any is read).",
        accepts=one_of("zstd", "gzip"),
    )
    # 400 KB: DynamoDB's item limit.
    threshold_bytes: int = setting(
        400 * 1024,
        "--compression-threshold-bytes",
        "METAAS_COMPRESSION_THRESHOLD_BYTES",
        "Items larger than this are compressed.",
        kind=Kind.INTEGER,
        accepts=at_least(0, "bytes"),
    )
    zstd_level: int = 3
    gzip_level: int = 6
    distribution_encoding: int = setting(
        2,
        "--distribution-encoding",
        "METAAS_DISTRIBUTION_ENCODING",
        "Encoding of the distributions written: 2, compact; 1, what releases before 2 "
        "read, for a rolling upgrade while they share the store. Both are read.",
        kind=Kind.INTEGER,
        accepts=Accepts("1 or 2", lambda v: v in (1, 2)),
    )

    def __post_init__(self) -> None:
        validate(self)
