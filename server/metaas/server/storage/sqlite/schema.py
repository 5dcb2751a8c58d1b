"""The SQLite schema, owned by the code and applied on open."""

from __future__ import annotations

import sqlite3
from typing import Final

SCHEMA_VERSION: Final = 1

_STATEMENTS: Final = (
    """
    CREATE TABLE IF NOT EXISTS partials (
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
    "CREATE INDEX IF NOT EXISTS partials_by_minute ON partials (minute)",
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
)


def apply(connection: sqlite3.Connection) -> None:
    """Create the tables if missing; refuse a database from a newer release."""
    with connection:
        for statement in _STATEMENTS:
            connection.execute(statement)
        row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
        found = row[0] if row else None
        if found is None:
            connection.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        elif found > SCHEMA_VERSION:
            raise RuntimeError(
                f"database schema version {found} is newer than this release ({SCHEMA_VERSION})"
            )
