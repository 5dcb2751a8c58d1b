"""The SQLite schema, owned by the code and applied on open."""

from __future__ import annotations

import sqlite3
from typing import Final

from metaas.server.config import CodecConfig
from metaas.server.model import Partial, Resolution, SeriesKey, decode_labels
from metaas.server.storage import codec
from metaas.server.storage.rollups import rollups_of

# 2: hourly rollups (the table ``hourly``).
SCHEMA_VERSION: Final = 2
# The table of each resolution; both have the same columns, and ``minute`` is
# the bucket's first minute.
TABLES: Final = {Resolution.MINUTE: "partials", Resolution.HOUR: "hourly"}


def _table(name: str) -> tuple[str, ...]:
    return (
        f"""
        CREATE TABLE IF NOT EXISTS {name} (
            app TEXT NOT NULL,
            metric TEXT NOT NULL,
            minute INTEGER NOT NULL,
            labels TEXT NOT NULL,
            writer TEXT NOT NULL,
            epoch INTEGER NOT NULL,
            distribution BLOB NOT NULL,
            PRIMARY KEY (app, metric, minute, labels, writer)
        ) WITHOUT ROWID
        """,
        f"CREATE INDEX IF NOT EXISTS {name}_by_minute ON {name} (minute)",
    )


_STATEMENTS: Final = (
    *(statement for name in TABLES.values() for statement in _table(name)),
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
)


def apply(connection: sqlite3.Connection, codec_config: CodecConfig | None = None) -> None:
    """Create the tables if missing, bring an older database to this
    release's version, and refuse one from a newer release."""
    with connection:
        for statement in _STATEMENTS:
            connection.execute(statement)
        row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
        found = row[0] if row else None
        if found is not None and found > SCHEMA_VERSION:
            raise RuntimeError(
                f"database schema version {found} is newer than this release ({SCHEMA_VERSION})"
            )
        if found == 1:
            _build_hourly(connection, codec_config or CodecConfig())
        if found != SCHEMA_VERSION:
            connection.execute("DELETE FROM schema_version")
            connection.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))


def _build_hourly(connection: sqlite3.Connection, codec_config: CodecConfig) -> None:
    """Version 1 to 2: derive each writer's hourly rollups from its stored
    minutes (``rollups.rollups_of``). Rows come in key order, so one
    (app, metric, hour) at a time is held in memory."""
    current: tuple[str, str, int] | None = None
    minutes: list[Partial] = []

    def write() -> None:
        connection.executemany(
            "INSERT OR REPLACE INTO hourly "
            "(app, metric, minute, labels, writer, epoch, distribution) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    p.series.app,
                    p.series.metric,
                    p.minute_ms,
                    p.series.labels_key,
                    p.writer,
                    p.epoch,
                    codec.encode_distribution(p.distribution, codec_config).data,
                )
                for p in rollups_of(minutes)
            ],
        )
        minutes.clear()

    cursor = connection.execute(
        "SELECT app, metric, minute, labels, writer, epoch, distribution FROM partials "
        "ORDER BY app, metric, minute, labels, writer"
    )
    for app, metric, minute, labels, writer, epoch, blob in cursor:
        bucket = (app, metric, Resolution.HOUR.floor(minute))
        if bucket != current:
            write()
            current = bucket
        series = SeriesKey(app, metric, decode_labels(labels))
        minutes.append(Partial(series, minute, writer, epoch, codec.decode_distribution(blob)))
    write()
