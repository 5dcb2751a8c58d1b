"""The table and its keys (see docs/dynamodb.md for the reasoning).

One table, string keys ``pk`` (partition) and ``sk`` (sort), on-demand
billing, TTL on the numeric attribute ``ttl``. Three kinds of item:

========  ==================================  ===============================
kind      pk                                  sk
========  ==================================  ===============================
block     ``b#<app>#<metric>#<day_ms>``       ``<minute_ms:013>#<writer>``
hourly    ``h#<app>#<metric>#<day_ms>``       ``<hour_ms:013>#<writer>``
catalog   ``s#<app>#<day_ms>``                ``<hour_ms:013>#<metric>#<writer>``
chunk     ``c#<block pk>#<block sk>#<hash>``  ``<index:05>``
========  ==================================  ===============================

A *block* holds one writer's partials of every series of a metric for one
minute; a query reads one partition per day. An *hourly* block is the same
for one hour (the rollup long ranges read). A *catalog* lists, per writer,
metric and hour, each series with a bit per minute that has data, so
``list_series`` never reads distributions. *Chunks* hold an encoded item too
large for one item; its head names them by content hash.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING, Final

from metaas.server.config import ConfigError
from metaas.server.model import DAY_MS, HOUR_MS

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient
    from types_aiobotocore_dynamodb.type_defs import AttributeValueTypeDef

PK: Final = "pk"
SK: Final = "sk"
TTL: Final = "ttl"
# Attributes of a head (block or catalog): the encoded payload inline, or the
# chunk count, content hash and total size of the chunks holding it.
DATA: Final = "d"
CHUNKS: Final = "cn"
HASH: Final = "ch"
SIZE: Final = "cz"

# DynamoDB's item limit is 400 KB (409,600 bytes, attribute names included);
# the budget stays a little below it, as some emulators cut off at 405,000.
MAX_ITEM_BYTES: Final = 400_000
# Upper bound of a number attribute's size in DynamoDB's item-size rules.
_NUMBER_BYTES: Final = 21
# Separator of key parts; apps and writers may not contain it.
SEP: Final = "#"
# Sorts after every character a minute or hour key continues with.
_AFTER: Final = "~"
_ACTIVE_WAIT_S: Final = 120.0


def day_of(time_ms: int) -> int:
    return time_ms - time_ms % DAY_MS


def hour_of(time_ms: int) -> int:
    return time_ms - time_ms % HOUR_MS


def block_pk(app: str, metric: str, day_ms: int) -> str:
    return f"b{SEP}{app}{SEP}{metric}{SEP}{day_ms}"


def block_sk(minute_ms: int, writer: str) -> str:
    return f"{minute_ms:013d}{SEP}{writer}"


def hourly_pk(app: str, metric: str, day_ms: int) -> str:
    return f"h{SEP}{app}{SEP}{metric}{SEP}{day_ms}"


def catalog_pk(app: str, day_ms: int) -> str:
    return f"s{SEP}{app}{SEP}{day_ms}"


def catalog_sk(hour_ms: int, metric: str, writer: str) -> str:
    return f"{hour_ms:013d}{SEP}{metric}{SEP}{writer}"


def parse_block_sk(sk: str) -> tuple[int, str]:
    """(minute_ms, writer)."""
    minute, _, writer = sk.partition(SEP)
    return int(minute), writer


def parse_catalog_sk(sk: str) -> tuple[int, str, str]:
    """(hour_ms, metric, writer); metrics may contain the separator."""
    hour, _, rest = sk.partition(SEP)
    metric, _, writer = rest.rpartition(SEP)
    return int(hour), metric, writer


def chunk_pk(head_pk: str, head_sk: str, content_hash: str) -> str:
    return f"c{SEP}{head_pk}{SEP}{head_sk}{SEP}{content_hash}"


def chunk_sk(index: int) -> str:
    return f"{index:05d}"


def sort_range(first_ms: int, last_ms: int) -> tuple[str, str]:
    """Bounds for ``sk BETWEEN`` covering sort keys that start with a
    zero-padded time in ``[first_ms, last_ms]``."""
    return f"{first_ms:013d}", f"{last_ms:013d}{_AFTER}"


def expires_at_s(until_ms: int, retention_ms: int) -> int:
    """The TTL (epoch seconds) of data whose last minute ends at ``until_ms``."""
    return math.ceil((until_ms + retention_ms) / 1000)


def item_size(item: dict[str, AttributeValueTypeDef]) -> int:
    """Size by DynamoDB's rules: names plus values (numbers at their bound)."""
    size = 0
    for name, value in item.items():
        size += len(name.encode())
        if "S" in value:
            size += len(value["S"].encode())
        elif "B" in value:
            size += len(value["B"])
        else:
            size += _NUMBER_BYTES
    return size


def capacity_units(size_bytes: int) -> int:
    """Write capacity units of writing an item of this size (1 per KB)."""
    return max(1, math.ceil(size_bytes / 1024))


async def apply(client: DynamoDBClient, table: str) -> str:
    """Create the table (on-demand) if missing, wait until it is active, and
    enable TTL on ``ttl``; return what was done. Safe to re-run."""
    done: list[str] = []
    existing = await describe_keys(client, table)
    if existing is None:
        await client.create_table(
            TableName=table,
            AttributeDefinitions=[
                {"AttributeName": PK, "AttributeType": "S"},
                {"AttributeName": SK, "AttributeType": "S"},
            ],
            KeySchema=[
                {"AttributeName": PK, "KeyType": "HASH"},
                {"AttributeName": SK, "KeyType": "RANGE"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        done.append("created (on-demand billing)")
    else:
        check_keys(table, existing)
    await wait_active(client, table)
    ttl = await client.describe_time_to_live(TableName=table)
    description = ttl.get("TimeToLiveDescription", {})
    status = description.get("TimeToLiveStatus", "DISABLED")
    attribute = description.get("AttributeName")
    if status in ("ENABLED", "ENABLING"):
        if attribute != TTL:
            raise ConfigError(
                f"dynamodb table {table} TTL attribute", attribute, f"{TTL!r} (disable TTL first)"
            )
    else:
        await client.update_time_to_live(
            TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL}
        )
        done.append(f"TTL enabled on {TTL!r}")
    return f"dynamodb table {table}: " + (", ".join(done) if done else "already current")


def check_keys(table: str, key_schema: list[tuple[str, str]]) -> None:
    if sorted(key_schema) != [(PK, "HASH"), (SK, "RANGE")]:
        raise ConfigError(
            f"dynamodb table {table} key schema",
            key_schema,
            f"{PK} (HASH) and {SK} (RANGE) strings, as `metaas schema apply` creates",
        )


async def describe_keys(client: DynamoDBClient, table: str) -> list[tuple[str, str]] | None:
    """The table's key schema as (name, type) pairs, or None if it is missing."""
    try:
        reply = await client.describe_table(TableName=table)
    except client.exceptions.ResourceNotFoundException:
        return None
    return [(k["AttributeName"], k["KeyType"]) for k in reply["Table"].get("KeySchema", [])]


async def wait_active(client: DynamoDBClient, table: str) -> None:
    deadline = time.monotonic() + _ACTIVE_WAIT_S
    delay = 0.05
    while True:
        reply = await client.describe_table(TableName=table)
        if reply["Table"].get("TableStatus") == "ACTIVE":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"dynamodb table {table} not active after {_ACTIVE_WAIT_S:.0f}s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
