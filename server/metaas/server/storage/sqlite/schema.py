"""The SQLite schema, owned by the code and applied on open, and the
statements that read and write it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection
from typing import Final

from metaas.server.config import CodecConfig, ViewsConfig
from metaas.server.model import Labels, Partial, Resolution, SeriesKey, decode_labels
from metaas.server.storage import codec
from metaas.server.storage.rollups import rollups_of
from metaas.server.storage.views import views_from_series

# 2: hourly rollups (the table ``hourly``).
# 3: views (docs/architecture.md), derived for data stored before them.
# 4: the label index ``series_labels``, derived from the stored minutes.
SCHEMA_VERSION: Final = 4
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


# The label index: one row per series and label (its postings, as search
# engines say), with the last hour the series had data. The series a query's
# matchers select are the intersection of one range of it per matcher.
LABEL_INDEX: Final = "series_labels"
_LABEL_INDEX_TABLE: Final = f"""
    CREATE TABLE IF NOT EXISTS {LABEL_INDEX} (
        app TEXT NOT NULL,
        metric TEXT NOT NULL,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        labels TEXT NOT NULL,
        last_hour INTEGER NOT NULL,
        PRIMARY KEY (app, metric, name, value, labels)
    ) WITHOUT ROWID
"""
# Upserts one row of the label index: (app, metric, name, value, labels, hour).
INDEX_LABEL: Final = (
    f"INSERT INTO {LABEL_INDEX} (app, metric, name, value, labels, last_hour) "  # noqa: S608
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE "
    "SET last_hour = max(last_hour, excluded.last_hour)"
)

# Upserts one partial into a table of TABLES (``{table}``): (app, metric,
# minute, labels, writer, epoch, distribution).
INSERT_PARTIAL: Final = (
    "INSERT OR REPLACE INTO {table} "
    "(app, metric, minute, labels, writer, epoch, distribution) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)

_STATEMENTS: Final = (
    *(statement for name in TABLES.values() for statement in _table(name)),
    _LABEL_INDEX_TABLE,
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
        if found in (1, 2):
            _build_views(connection, codec_config or CodecConfig())
        if found in (1, 2, 3):
            _build_label_index(connection)
        if found != SCHEMA_VERSION:
            connection.execute("DELETE FROM schema_version")
            connection.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))


def _build_hourly(connection: sqlite3.Connection, codec_config: CodecConfig) -> None:
    """Version 1 to 2: derive each writer's hourly rollups from its stored
    minutes (``rollups.rollups_of``)."""
    _derive(connection, codec_config, rollups_of)


def _build_views(connection: sqlite3.Connection, codec_config: CodecConfig) -> None:
    """Version 2 to 3: derive the views of the default ``--views`` (minutes
    and hourly rollups) from the stored series, so the whole-app and
    per-status queries of data stored before views existed read them."""
    projections = ViewsConfig().projections

    def derive(minutes: list[Partial]) -> list[Partial]:
        views = views_from_series(minutes, projections)
        return [*views, *rollups_of(views)]

    _derive(connection, codec_config, derive)


def _build_label_index(connection: sqlite3.Connection) -> None:
    """Version 3 to 4: index the labels of every stored series, with the
    last hour it has minutes in."""
    connection.execute(
        f"INSERT OR REPLACE INTO {LABEL_INDEX} "  # noqa: S608 - constant names
        "(app, metric, name, value, labels, last_hour) "
        "SELECT p.app, p.metric, j.key, j.value, p.labels, max(p.minute - p.minute % ?) "
        "FROM partials AS p, json_each(p.labels) AS j "
        "GROUP BY p.app, p.metric, j.key, j.value, p.labels",
        (int(Resolution.HOUR),),
    )


def _derive(
    connection: sqlite3.Connection,
    codec_config: CodecConfig,
    derive: Callable[[list[Partial]], list[Partial]],
) -> None:
    """Store ``derive(minutes)`` for the stored minutes of each (app, metric,
    hour), one hour at a time, in the table of each derived partial's
    resolution. The hours are listed first, so no cursor reads a table while
    it is written."""
    hours = connection.execute(
        "SELECT DISTINCT app, metric, minute - minute % ? FROM partials",
        (int(Resolution.HOUR),),
    ).fetchall()
    for app, metric, hour in hours:
        minutes = [
            Partial(
                SeriesKey(app, metric, decode_labels(labels)),
                minute,
                writer,
                epoch,
                codec.decode_distribution(blob),
            )
            for minute, labels, writer, epoch, blob in connection.execute(
                "SELECT minute, labels, writer, epoch, distribution FROM partials "
                "WHERE app = ? AND metric = ? AND minute >= ? AND minute < ?",
                (app, metric, hour, hour + Resolution.HOUR),
            )
        ]
        for partial in derive(minutes):
            connection.execute(
                INSERT_PARTIAL.format(table=TABLES[partial.resolution]),
                (
                    partial.series.app,
                    partial.series.metric,
                    partial.minute_ms,
                    partial.series.labels_key,
                    partial.writer,
                    partial.epoch,
                    codec.encode_distribution(partial.distribution, codec_config).data,
                ),
            )


# A statement and its parameters.
Select = tuple[str, tuple[object, ...]]

_SELECT_RANGE: Final = (
    "SELECT minute, labels, writer, epoch, distribution FROM {table} "
    "WHERE app = ? AND metric = ? AND minute >= ? AND minute < ?"
)
# The rows of some series: one seek per series and bucket, on the primary
# key (app, metric, minute, labels), instead of a scan of every series' rows.
# The buckets come from a recursive query, the series as a JSON array.
_SELECT_SERIES: Final = (
    "SELECT minute, labels, writer, epoch, distribution FROM {table} "
    "WHERE app = ? AND metric = ? AND minute IN ("
    "WITH RECURSIVE bucket(start) AS "
    "(SELECT ? UNION ALL SELECT start + ? FROM bucket WHERE start + ? < ?) "
    "SELECT start FROM bucket) "
    "AND labels IN (SELECT value FROM json_each(?))"
)


def select(
    app: str,
    metric: str,
    start_ms: int,
    end_ms: int,
    resolution: Resolution,
    series: Collection[SeriesKey] | None,
) -> Select:
    """The statement reading ``[start_ms, end_ms)`` of ``series`` (None: all)."""
    table = TABLES[resolution]
    if series is None:
        return _SELECT_RANGE.format(table=table), (app, metric, start_ms, end_ms)
    first = resolution.ceil(start_ms)
    labels = json.dumps([s.labels_key for s in series])
    step = int(resolution)
    return (
        _SELECT_SERIES.format(table=table),
        (app, metric, first, step, step, end_ms, labels),
    )


def select_matching(app: str, metric: str, start_ms: int, matchers: Labels) -> Select:
    """The statement listing the labels of the metric's series that hold
    every matcher and have data in an hour from ``start_ms``'s on: one range
    of the label index per matcher, intersected, so the rows read are the
    series holding each matcher, whatever else is stored."""
    one = (
        f"SELECT labels FROM {LABEL_INDEX} "  # noqa: S608 - constant names
        "WHERE app = ? AND metric = ? AND name = ? AND value = ? AND last_hour >= ?"
    )
    first_hour = Resolution.HOUR.floor(start_ms)
    params = tuple(p for name, value in matchers for p in (app, metric, name, value, first_hour))
    return " INTERSECT ".join([one] * len(matchers)), params
