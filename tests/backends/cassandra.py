"""Cassandra under the conformance suite, and helpers for its integration tests.

Everything runs on the real node at 127.0.0.1:9042 that ``make test`` starts
(``scripts/cassandra.sh``). A test that cannot reach it fails; it never skips.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.policies import DCAwareRoundRobinPolicy

from metaas.server.clock import Clock
from metaas.server.storage import Storage, StorageContext, open_storage

HOST = "127.0.0.1"
PORT = 9042
RETENTION_MS = 30 * 86_400_000
CONFORMANCE_KEYSPACE = "metaas_conformance"
_TABLES = ("partials", "hourly", "series_by_app")

_lock = threading.Lock()
_admin: Any = None
_prepared_keyspaces: set[str] = set()


def url(keyspace: str, **options: str | int) -> str:
    query = "&".join(f"{key}={value}" for key, value in options.items())
    return f"cassandra://{HOST}:{PORT}/{keyspace}" + (f"?{query}" if query else "")


def admin() -> Any:
    """A plain driver session for test set-up (blocking: call from a thread)."""
    global _admin
    with _lock:
        if _admin is None:
            cluster = Cluster(
                [(HOST, PORT)],
                protocol_version=5,
                execution_profiles={
                    EXEC_PROFILE_DEFAULT: ExecutionProfile(
                        load_balancing_policy=DCAwareRoundRobinPolicy(), request_timeout=60
                    )
                },
            )
            try:
                _admin = cluster.connect()
            except NoHostAvailable as error:
                cluster.shutdown()
                raise AssertionError(
                    f"Cassandra is not answering on {HOST}:{PORT} ({error}); "
                    "`make test` starts it, or run scripts/cassandra.sh start"
                ) from error
        return _admin


async def execute(cql: str, params: tuple[object, ...] = ()) -> list[Any]:
    """Run one statement through the admin session without blocking the loop."""
    return list(await asyncio.to_thread(lambda: list(admin().execute(cql, params or None))))


async def select(keyspace: str, table: str, columns: str) -> list[Any]:
    """Every row of a test table (small tables only)."""
    return await execute(f"SELECT {columns} FROM {keyspace}.{table}")  # noqa: S608 - constant test names


async def drop_keyspace(keyspace: str) -> None:
    await execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
    _prepared_keyspaces.discard(keyspace)


async def truncate(keyspace: str) -> None:
    for table in _TABLES:
        await execute(f"TRUNCATE {keyspace}.{table}")


async def open_clean(tmp_path: Path, clock: Clock) -> Storage:
    """An empty store: one keyspace for the whole run, its tables truncated
    before each test (cheap with auto_snapshot off, as the local node runs)."""
    del tmp_path
    if CONFORMANCE_KEYSPACE not in _prepared_keyspaces:
        await drop_keyspace(CONFORMANCE_KEYSPACE)
        storage = await open_storage(url(CONFORMANCE_KEYSPACE), StorageContext(RETENTION_MS))
        await storage.close()
        _prepared_keyspaces.add(CONFORMANCE_KEYSPACE)
    else:
        await truncate(CONFORMANCE_KEYSPACE)
    return await open_storage(
        url(CONFORMANCE_KEYSPACE, schema="none"), StorageContext(RETENTION_MS, clock=clock)
    )
