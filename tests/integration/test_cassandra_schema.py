"""The Cassandra schema as the node reports it, and how the backend fails."""

from __future__ import annotations

import asyncio
import subprocess
import time

import numpy as np
import pytest

from metaas.server.config import CodecConfig
from metaas.server.model import Partial, SeriesKey
from metaas.server.sketch import Distribution
from metaas.server.storage import (
    Invalid,
    StorageContext,
    Unavailable,
    apply_schema,
    open_storage,
)
from metaas.server.storage.codec import Codec
from tests.backends.cassandra import RETENTION_MS, drop_keyspace, execute, select, url
from tests.support import METAAS

DAY_S = 86_400
MINUTE = 60_000
TWCS = "org.apache.cassandra.db.compaction.TimeWindowCompactionStrategy"


async def _tables(keyspace: str) -> dict[str, object]:
    rows = await execute(
        "SELECT table_name, default_time_to_live, compaction, gc_grace_seconds "
        "FROM system_schema.tables WHERE keyspace_name = %s",
        (keyspace,),
    )
    return {row.table_name: row for row in rows}


async def test_tables_expire_with_the_retention_and_compact_by_time_window() -> None:
    keyspace = "metaas_it_schema"
    await drop_keyspace(keyspace)
    done = await apply_schema(url(keyspace), StorageContext(7 * DAY_S * 1000))
    assert "created table metaas_it_schema.partials" in done

    tables = await _tables(keyspace)
    for name in ("partials", "series_by_app"):
        table = tables[name]
        assert table.default_time_to_live == 7 * DAY_S  # type: ignore[attr-defined]
        compaction = dict(table.compaction)  # type: ignore[attr-defined]
        assert compaction["class"] == TWCS
        assert compaction["compaction_window_unit"] == "DAYS"
        assert compaction["compaction_window_size"] == "1"
        assert table.gc_grace_seconds == 3 * 3600  # type: ignore[attr-defined]

    columns = await execute(
        "SELECT column_name, kind, position FROM system_schema.columns "
        "WHERE keyspace_name = %s AND table_name = 'partials'",
        (keyspace,),
    )
    key = {
        kind: [c.column_name for c in sorted(columns, key=lambda c: c.position) if c.kind == kind]
        for kind in ("partition_key", "clustering")
    }
    assert key == {
        "partition_key": ["app", "metric", "hour"],
        "clustering": ["minute", "labels", "writer"],
    }
    (keyspace_row,) = await execute(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", (keyspace,)
    )
    assert dict(keyspace_row.replication) == {
        "class": "org.apache.cassandra.locator.SimpleStrategy",
        "replication_factor": "1",
    }

    # Applying again with another retention only changes the TTLs.
    done = await apply_schema(url(keyspace), StorageContext(RETENTION_MS))
    assert "created" not in done
    assert "default_time_to_live = 2592000" in done
    tables = await _tables(keyspace)
    assert tables["partials"].default_time_to_live == 30 * DAY_S  # type: ignore[attr-defined]


async def test_rows_expire_a_retention_after_their_minute_not_after_their_write() -> None:
    keyspace = "metaas_it_ttl"
    await drop_keyspace(keyspace)
    storage = await open_storage(url(keyspace), StorageContext(RETENTION_MS))
    try:
        now = time.time_ns() // 1_000_000
        minute = now - now % MINUTE - 10 * 86_400_000  # ten days ago
        dist = Distribution.from_values(np.array([1.0, 2.0]))
        await storage.write_partials([Partial(SeriesKey.of("shop", "m"), minute, "w1", 1, dist)])
    finally:
        await storage.close()
    (row,) = await select(keyspace, "partials", "TTL(distribution) AS ttl")
    assert 20 * DAY_S - 120 <= row.ttl <= 20 * DAY_S


async def test_schema_apply_command_and_schema_none() -> None:
    keyspace = "metaas_it_cli"
    await drop_keyspace(keyspace)
    with pytest.raises(Invalid, match="schema apply"):
        await open_storage(url(keyspace, schema="none"), StorageContext(RETENTION_MS))

    applied = await asyncio.to_thread(
        subprocess.run,
        [METAAS, "schema", "apply", "--storage", url(keyspace), "--retention-days", "3"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "created keyspace metaas_it_cli" in applied.stdout
    assert (await _tables(keyspace))["partials"].default_time_to_live == 3 * DAY_S  # type: ignore[attr-defined]
    storage = await open_storage(url(keyspace, schema="none"), StorageContext(RETENTION_MS))
    await storage.close()


async def test_large_items_are_stored_compressed_and_read_back() -> None:
    keyspace = "metaas_it_items"
    await drop_keyspace(keyspace)
    codec = CodecConfig(threshold_bytes=512)
    storage = await open_storage(url(keyspace), StorageContext(RETENTION_MS, codec=codec))
    try:
        now = time.time_ns() // 1_000_000
        minute = now - now % MINUTE - MINUTE
        values = np.random.default_rng(7).lognormal(0.0, 4.0, 50_000)
        partial = Partial(
            SeriesKey.of("shop", "m"), minute, "w1", 1, Distribution.from_values(values)
        )
        await storage.write_partials([partial])
        (read,) = await storage.read_partials("shop", "m", minute, minute + MINUTE)
        assert read.distribution.to_bytes() == partial.distribution.to_bytes()
    finally:
        await storage.close()
    (row,) = await select(keyspace, "partials", "distribution")
    assert Codec(row.distribution[2]) is Codec.ZSTD  # the codec, in the item header
    assert len(row.distribution) < len(partial.distribution.to_bytes())


async def test_an_unreachable_cluster_is_unavailable() -> None:
    with pytest.raises(Unavailable) as raised:
        await open_storage(
            "cassandra://127.0.0.1:1/nowhere?connect_timeout_ms=500", StorageContext(RETENTION_MS)
        )
    assert raised.value.is_retryable


async def test_a_request_the_node_rejects_is_invalid_and_not_retryable() -> None:
    keyspace = "metaas_it_invalid"
    await drop_keyspace(keyspace)
    storage = await open_storage(url(keyspace), StorageContext(RETENTION_MS))
    try:
        now = time.time_ns() // 1_000_000
        # A clustering key above 64 KiB is refused by Cassandra itself.
        series = SeriesKey.of("shop", "m", {"huge": "x" * 70_000})
        dist = Distribution.from_values(np.array([1.0]))
        with pytest.raises(Invalid) as raised:
            await storage.write_partials([Partial(series, now - now % MINUTE, "w1", 1, dist)])
        assert not raised.value.is_retryable
        assert raised.value.backend == "cassandra"
    finally:
        await storage.close()
