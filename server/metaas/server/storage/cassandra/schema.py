"""The Cassandra schema, owned by the code.

Three tables, all time-bucketed so that no partition grows without bound, both
compacted by time window and expiring with the retention:

``partials``: one writer's distribution per series and minute, partitioned by
``(app, metric, hour)``. A query for one metric over a range reads one
partition per hour of the range (in parallel), each holding only that metric's
series for that hour: ``series x writers x 60`` rows at most.

``hourly``: the hourly rollups, one writer's distribution per series and
hour, partitioned by ``(app, metric, day)``. A long range reads one partition
per day instead of one per hour, and 24 rows per series-writer-day instead of
1,440.

``series_by_app``: which series of an app had data in which hour, partitioned
by ``(app, day)`` and written alongside the partials (once per series and hour
per process). ``list_series`` reads one partition per day of its range instead
of scanning the cluster.

Rows are written ``USING TTL`` computed from their minute, so data expires a
retention after its minute rather than after its (possibly late) write; the
tables' ``default_time_to_live`` is the retention as well, a safety net.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from metaas.server.model import DAY_MS
from metaas.server.storage.cassandra.config import CassandraConfig
from metaas.server.storage.cassandra.session import CqlSession
from metaas.server.storage.errors import Invalid

# 2: the table ``hourly``.
SCHEMA_VERSION: Final = 2
PARTIALS: Final = "partials"
HOURLY: Final = "hourly"
SERIES: Final = "series_by_app"
VERSIONS: Final = "schema_version"
_TABLES: Final = (PARTIALS, HOURLY, SERIES, VERSIONS)
# Cassandra refuses TTLs above 20 years.
MAX_TTL_S: Final = 20 * 365 * DAY_MS // 1000
_DDL_TIMEOUT_S: Final = 60.0
_TWCS: Final = "org.apache.cassandra.db.compaction.TimeWindowCompactionStrategy"
# One compaction window per day: about 30 SSTables live for a 30-day retention,
# and a whole window's SSTable is dropped once everything in it expired.
_COMPACTION: Final = (
    "{'class': 'TimeWindowCompactionStrategy', "
    "'compaction_window_unit': 'DAYS', 'compaction_window_size': 1}"
)
# Rows are never deleted, only overwritten or expired, so tombstones need not
# wait the 10-day default before they are purged; 3 hours covers hint replay.
_GC_GRACE_S: Final = 10_800
# {ks} is the keyspace, a validated identifier.
_RECORD_VERSION: Final = (
    "INSERT INTO {ks}.schema_version (component, version) VALUES ('metaas', %s)"
)
_READ_VERSION: Final = "SELECT version FROM {ks}.schema_version WHERE component = 'metaas'"


@dataclass(frozen=True, slots=True)
class TableSettings:
    default_ttl_s: int
    compaction_class: str


def ttl_seconds(retention_ms: int) -> int:
    """The tables' default TTL for a retention (at least 1 s, at most 20 years)."""
    return max(1, min(MAX_TTL_S, -(-retention_ms // 1000)))


def _distributions(keyspace: str, table: str, partition: str, bucket: str, options: str) -> str:
    """A table of one writer's distribution per series and ``bucket``
    (minute or hour), partitioned by ``partition`` (its hour or day)."""
    return f"""
        CREATE TABLE IF NOT EXISTS {keyspace}.{table} (
            app text,
            metric text,
            {partition} bigint,
            {bucket} bigint,
            labels text,
            writer text,
            epoch bigint,
            distribution blob,
            PRIMARY KEY ((app, metric, {partition}), {bucket}, labels, writer)
        ) {options}
          AND comment = 'metaas: one writer''s distribution per series and {bucket}'
    """


def _create_statements(keyspace: str, ttl_s: int) -> dict[str, str]:
    options = (
        f"WITH compaction = {_COMPACTION} AND default_time_to_live = {ttl_s} "
        f"AND gc_grace_seconds = {_GC_GRACE_S}"
    )
    return {
        PARTIALS: _distributions(keyspace, PARTIALS, "hour", "minute", options),
        HOURLY: _distributions(keyspace, HOURLY, "day", "hour", options),
        SERIES: f"""
            CREATE TABLE IF NOT EXISTS {keyspace}.{SERIES} (
                app text,
                day bigint,
                hour bigint,
                metric text,
                labels text,
                PRIMARY KEY ((app, day), hour, metric, labels)
            ) {options}
              AND comment = 'metaas: series of an app with data in each hour'
        """,
        VERSIONS: f"""
            CREATE TABLE IF NOT EXISTS {keyspace}.{VERSIONS} (
                component text PRIMARY KEY,
                version int
            ) WITH comment = 'metaas: schema version written by metaas schema apply'
        """,
    }


async def apply(session: CqlSession, config: CassandraConfig, retention_ms: int) -> list[str]:
    """Create the keyspace and tables if missing, bring the TTL and compaction
    of existing tables to what this release and retention want, and record
    the schema version; returns what was done. Never changes the replication
    of an existing keyspace (that needs a repair, an operator's decision)."""
    keyspace = config.keyspace
    done: list[str] = []
    existing = await _keyspace_replication(session, keyspace)
    if existing is None:
        await session.execute(
            f"CREATE KEYSPACE IF NOT EXISTS {keyspace} "
            f"WITH replication = {config.replication.cql()}",
            timeout_s=_DDL_TIMEOUT_S,
        )
        done.append(f"created keyspace {keyspace} with replication {config.replication.cql()}")
    else:
        done.append(f"keyspace {keyspace} exists (replication {existing}, left as is)")
    await _check_version(session, keyspace)
    ttl_s = ttl_seconds(retention_ms)
    tables = await table_settings(session, keyspace)
    for table, statement in _create_statements(keyspace, ttl_s).items():
        current = tables.get(table)
        if current is None:
            await session.execute(statement, timeout_s=_DDL_TIMEOUT_S)
            done.append(f"created table {keyspace}.{table}")
            if table == HOURLY and PARTIALS in tables:
                done.append(
                    "minutes stored before schema version 2 have no hourly rollups, which "
                    "queries on whole hours read: serve with --rollups-from set to now "
                    "until `metaas rollups rebuild --storage URL --app APP` has run for "
                    "each app"
                )
            continue
        if table == VERSIONS:
            continue
        changes = []
        if current.default_ttl_s != ttl_s:
            changes.append(f"default_time_to_live = {ttl_s}")
        if current.compaction_class != _TWCS:
            changes.append(f"compaction = {_COMPACTION}")
        if changes:
            await session.execute(
                f"ALTER TABLE {keyspace}.{table} WITH {' AND '.join(changes)}",
                timeout_s=_DDL_TIMEOUT_S,
            )
            done.append(f"altered {keyspace}.{table}: {', '.join(changes)}")
    await session.execute(_RECORD_VERSION.format(ks=keyspace), (SCHEMA_VERSION,))
    done.append(f"schema version {SCHEMA_VERSION}, default TTL {ttl_s} s, TWCS 1-day windows")
    return done


async def verify(session: CqlSession, config: CassandraConfig) -> None:
    """Refuse to run on a keyspace without this release's tables."""
    keyspace = config.keyspace
    tables = await table_settings(session, keyspace)
    missing = [table for table in _TABLES if table not in tables]
    if missing:
        raise Invalid(
            f"keyspace {keyspace} lacks table(s) {', '.join(missing)}: run "
            "`metaas schema apply --storage URL` (or use the URL option schema=auto)",
            backend="cassandra",
        )
    await _check_version(session, keyspace)


async def table_settings(session: CqlSession, keyspace: str) -> dict[str, TableSettings]:
    """TTL and compaction class of the keyspace's tables, read from system_schema."""
    rows = await session.execute(
        "SELECT table_name, default_time_to_live, compaction FROM system_schema.tables "
        "WHERE keyspace_name = %s",
        (keyspace,),
    )
    return {
        name: TableSettings(int(ttl or 0), str((compaction or {}).get("class", "")))
        for name, ttl, compaction in rows
    }


async def _keyspace_replication(session: CqlSession, keyspace: str) -> dict[str, str] | None:
    rows = await session.execute(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", (keyspace,)
    )
    return dict(rows[0][0]) if rows else None


async def _check_version(session: CqlSession, keyspace: str) -> None:
    if VERSIONS not in await table_settings(session, keyspace):
        return
    rows = await session.execute(_READ_VERSION.format(ks=keyspace))
    found = rows[0][0] if rows else None
    if found is not None and found > SCHEMA_VERSION:
        raise Invalid(
            f"keyspace {keyspace} has schema version {found}, newer than this "
            f"release ({SCHEMA_VERSION})",
            backend="cassandra",
        )
