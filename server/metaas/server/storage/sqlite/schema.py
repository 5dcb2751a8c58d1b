"""The SQLite schema, owned by the code and applied on open."""

from __future__ import annotations

import sqlite3
from typing import Final

from metaas.server.config import CodecConfig
from metaas.server.model import Resolution
from metaas.server.sketch import Distribution
from metaas.server.storage import codec

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
    minutes (the epoch of a rollup is the newest of its minutes). Rows come
    in key order, so one (app, metric, hour) at a time is held in memory."""
    hour_ms = int(Resolution.HOUR)
    current: tuple[str, str, int] | None = None
    rollups: dict[tuple[str, str], tuple[int, Distribution]] = {}  # (labels, writer)

    def write() -> None:
        if current is None or not rollups:
            return
        app, metric, hour = current
        connection.executemany(
            "INSERT OR REPLACE INTO hourly "
            "(app, metric, minute, labels, writer, epoch, distribution) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (app, metric, hour, labels, writer, epoch, encoded(distribution))
                for (labels, writer), (epoch, distribution) in rollups.items()
            ],
        )
        rollups.clear()

    def encoded(distribution: Distribution) -> bytes:
        return codec.encode_distribution(distribution, codec_config).data

    cursor = connection.execute(
        "SELECT app, metric, minute, labels, writer, epoch, distribution FROM partials "
        "ORDER BY app, metric, minute, labels, writer"
    )
    for app, metric, minute, labels, writer, epoch, blob in cursor:
        bucket = (app, metric, minute - minute % hour_ms)
        if bucket != current:
            write()
            current = bucket
        distribution = codec.decode_distribution(blob)
        found = rollups.get((labels, writer))
        if found is None:
            rollups[(labels, writer)] = (epoch, distribution)
        else:
            found[1].merge(distribution)
            rollups[(labels, writer)] = (max(found[0], epoch), found[1])
    write()
