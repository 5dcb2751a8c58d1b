"""Damaging a stored item behind a backend's back, through its own driver,
as a failing disk, a bad restore or a foreign writer would."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Final, cast

import numpy as np

from metaas.server.config import CodecConfig
from metaas.server.model import Partial
from metaas.server.sketch import Distribution
from metaas.server.storage import Storage, codec
from tests.conformance.conftest import RETENTION_MS, backend_of

# A distribution as stored, then three ways an item can be beyond decoding:
# compressed data that is not, a distribution cut short, and an encoding
# byte no release wrote.
_STORED: Final = Distribution.from_values(np.array([1.0, 2.5, 400.0])).to_bytes()
DISTRIBUTIONS: Final = {
    "truncated distribution": _STORED[:-3],
    "bad encoding byte": b"\x63" + _STORED[1:],
}
BAD_COMPRESSION: Final = b"M\x01\x01\x00" + b"not zstd at all"  # header: zstd
DAMAGES: Final = ("bad compression", *DISTRIBUTIONS)


def _item(damage: str) -> bytes:
    """The stored item (header and payload) of a damaged distribution."""
    if damage == "bad compression":
        return BAD_COMPRESSION
    return codec.encode(DISTRIBUTIONS[damage], CodecConfig()).data


async def damage_item(storage: Storage, partial: Partial, damage: str) -> None:
    """Overwrite the stored item that holds ``partial`` (a minute) with one
    damaged as ``damage`` (one of DAMAGES) says."""
    backend = backend_of(storage)
    plant = {"sqlite": _sqlite, "cassandra": _cassandra, "dynamodb": _dynamodb}[backend.name]
    await plant(backend, partial, damage)


async def _sqlite(backend: Storage, partial: Partial, damage: str) -> None:
    from metaas.server.storage.sqlite import SqliteStorage

    path = cast(SqliteStorage, backend).path
    series = partial.series

    def overwrite() -> int:
        with sqlite3.connect(path) as connection:
            return connection.execute(
                "UPDATE partials SET distribution = ? "
                "WHERE app = ? AND metric = ? AND minute = ? AND labels = ? AND writer = ?",
                (
                    _item(damage),
                    series.app,
                    series.metric,
                    partial.minute_ms,
                    series.labels_key,
                    partial.writer,
                ),
            ).rowcount

    assert await asyncio.to_thread(overwrite) == 1


async def _cassandra(backend: Storage, partial: Partial, damage: str) -> None:
    from metaas.server.model import Resolution
    from metaas.server.storage.cassandra import CassandraStorage
    from tests.backends import cassandra

    keyspace = cast(CassandraStorage, backend).config.keyspace
    series = partial.series
    await cassandra.execute(
        f"UPDATE {keyspace}.partials SET distribution = %s WHERE app = %s AND metric = %s "  # noqa: S608 - test keyspace
        "AND hour = %s AND minute = %s AND labels = %s AND writer = %s",
        (
            _item(damage),
            series.app,
            series.metric,
            Resolution.HOUR.floor(partial.minute_ms),
            partial.minute_ms,
            series.labels_key,
            partial.writer,
        ),
    )


async def _dynamodb(backend: Storage, partial: Partial, damage: str) -> None:
    """A block item holds every series of its minute and writer: the whole
    item is damaged (bad compression), or the partial's entry in it."""
    from metaas.server.storage.dynamodb import DynamoStorage, items, schema
    from tests.backends import dynamodb

    table = cast(DynamoStorage, backend).config.table
    series, minute = partial.series, partial.minute_ms
    if damage == "bad compression":
        data = BAD_COMPRESSION
    else:
        block = {series.labels_key: (partial.epoch, DISTRIBUTIONS[damage])}
        data = codec.encode(items.encode_block(block), CodecConfig()).data
    item = {
        schema.PK: {"S": schema.block_pk(series.app, series.metric, schema.day_of(minute))},
        schema.SK: {"S": schema.block_sk(minute, partial.writer)},
        schema.TTL: {"N": str(schema.expires_at_s(partial.last_minute_ms, RETENTION_MS))},
        schema.DATA: {"B": data},
    }
    async with dynamodb.raw_client() as client:
        await client.put_item(TableName=table, Item=item)  # type: ignore[arg-type]
