"""DynamoDB requests with batching, paging, retries of unprocessed items,
capacity accounting and error translation. Nothing here knows about
partials; backend.py does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import aiohttp
from botocore import exceptions as boto
from opentelemetry.metrics import Meter

from metaas.server.retry import backoff
from metaas.server.storage.concurrency import gather_or_cancel
from metaas.server.storage.dynamodb import schema
from metaas.server.storage.dynamodb.config import DynamoConfig
from metaas.server.storage.errors import Invalid, StorageError, Throttled, Translator, Unavailable

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient
    from types_aiobotocore_dynamodb.type_defs import (
        AttributeValueTypeDef,
        ConsumedCapacityTypeDef,
        QueryInputTypeDef,
        WriteRequestTypeDef,
    )

    Item = dict[str, AttributeValueTypeDef]

NAME: Final = "dynamodb"
# DynamoDB's limits per request are 25 items and 16 MB for BatchWriteItem,
# 100 keys for BatchGetItem. Write batches are also kept to about 700 KB of
# items, under 1 MiB once binary values are base64-encoded: botocore
# serializes a request on the event loop and aiohttp sends it in one piece
# (warning above 1 MiB), so big requests would stall every other task. Small
# items still go 25 at a time; 400 KB items go one or two per request, in
# parallel.
MAX_WRITE_ITEMS: Final = 25
MAX_WRITE_BYTES: Final = 700_000
MAX_GET_KEYS: Final = 100
_THROTTLING: Final = frozenset(
    (
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "LimitExceededException",
    )
)
_UNAVAILABLE: Final = frozenset(("InternalServerError", "ServiceUnavailable"))
_INVALID_LOCAL: Final = (
    boto.ParamValidationError,
    boto.NoCredentialsError,
    boto.PartialCredentialsError,
    boto.NoRegionError,
)

Key = tuple[str, str]


def key_of(item: Item) -> Key:
    return item[schema.PK]["S"], item[schema.SK]["S"]


class Calls:
    """The requests the backend makes, on one shared client."""

    def __init__(self, client: DynamoDBClient, config: DynamoConfig, meter: Meter) -> None:
        self._client = client
        self._table = config.table
        self._attempts = config.batch_attempts
        self._consistent_queries = config.consistent_queries
        self._parallel = asyncio.Semaphore(config.concurrency)
        self._capacity = meter.create_counter(
            "metaas.storage.dynamodb.capacity",
            unit="{capacity_unit}",
            description="Capacity units DynamoDB reports as consumed, by operation",
        )
        self._unprocessed = meter.create_counter(
            "metaas.storage.dynamodb.unprocessed",
            unit="{item}",
            description="Items or keys DynamoDB returned unprocessed and were retried",
        )

    async def write(self, requests: Sequence[WriteRequestTypeDef], sizes: Sequence[int]) -> None:
        """Apply every put/delete (``sizes`` are the items' byte sizes), in
        batches run in parallel; unprocessed items are retried with backoff.
        Raises Throttled if some are still unprocessed after all attempts."""
        batches: list[list[WriteRequestTypeDef]] = []
        batch: list[WriteRequestTypeDef] = []
        batch_bytes = 0
        for request, size in zip(requests, sizes, strict=True):
            if batch and (len(batch) == MAX_WRITE_ITEMS or batch_bytes + size > MAX_WRITE_BYTES):
                batches.append(batch)
                batch, batch_bytes = [], 0
            batch.append(request)
            batch_bytes += size
        if batch:
            batches.append(batch)
        await gather_or_cancel(self._write_batch(b) for b in batches)

    async def _write_batch(self, batch: list[WriteRequestTypeDef]) -> None:
        pending = batch
        delays = backoff(base_s=0.05, cap_s=2.0)
        for attempt in range(self._attempts):
            if attempt:
                self._unprocessed.add(len(pending), {"db.operation": "BatchWriteItem"})
                await asyncio.sleep(next(delays))
            async with self._parallel:
                with translated:
                    reply = await self._client.batch_write_item(
                        RequestItems={self._table: pending}, ReturnConsumedCapacity="TOTAL"
                    )
            self._count("BatchWriteItem", reply.get("ConsumedCapacity", []))
            left = reply.get("UnprocessedItems", {}).get(self._table, [])
            if not left:
                return
            pending = list(left)  # type: ignore[arg-type]  # output and input shapes agree
        raise Throttled(
            f"{len(pending)} items still unprocessed after {self._attempts} BatchWriteItem rounds",
            backend=NAME,
        )

    async def get(self, keys: Sequence[Key], *, consistent: bool) -> dict[Key, Item]:
        """The items among ``keys`` that exist (BatchGetItem, 100 keys per
        request, unprocessed keys retried with backoff)."""
        unique = list(dict.fromkeys(keys))
        found: dict[Key, Item] = {}
        groups = [unique[i : i + MAX_GET_KEYS] for i in range(0, len(unique), MAX_GET_KEYS)]
        for items in await gather_or_cancel(self._get_batch(g, consistent) for g in groups):
            found.update((key_of(item), item) for item in items)
        return found

    async def _get_batch(self, keys: list[Key], consistent: bool) -> list[Item]:
        pending: list[dict[str, AttributeValueTypeDef]] = [
            {schema.PK: {"S": pk}, schema.SK: {"S": sk}} for pk, sk in keys
        ]
        items: list[Item] = []
        delays = backoff(base_s=0.05, cap_s=2.0)
        for attempt in range(self._attempts):
            if attempt:
                self._unprocessed.add(len(pending), {"db.operation": "BatchGetItem"})
                await asyncio.sleep(next(delays))
            async with self._parallel:
                with translated:
                    reply = await self._client.batch_get_item(
                        RequestItems={self._table: {"Keys": pending, "ConsistentRead": consistent}},
                        ReturnConsumedCapacity="TOTAL",
                    )
            self._count("BatchGetItem", reply.get("ConsumedCapacity", []))
            items.extend(reply.get("Responses", {}).get(self._table, []))
            left = reply.get("UnprocessedKeys", {}).get(self._table)
            if not left or not left.get("Keys"):
                return items
            pending = list(left["Keys"])
        raise Throttled(
            f"{len(pending)} keys still unprocessed after {self._attempts} BatchGetItem rounds",
            backend=NAME,
        )

    async def query(self, pk: str, low: str, high: str) -> list[Item]:
        """Every item of partition ``pk`` with ``low <= sk <= high``,
        following LastEvaluatedKey to the end."""
        request: QueryInputTypeDef = {
            "TableName": self._table,
            "KeyConditionExpression": "#pk = :pk AND #sk BETWEEN :low AND :high",
            "ExpressionAttributeNames": {"#pk": schema.PK, "#sk": schema.SK},
            "ExpressionAttributeValues": {
                ":pk": {"S": pk},
                ":low": {"S": low},
                ":high": {"S": high},
            },
            "ConsistentRead": self._consistent_queries,
            "ReturnConsumedCapacity": "TOTAL",
        }
        items: list[Item] = []
        while True:
            async with self._parallel:
                with translated:
                    reply = await self._client.query(**request)
            consumed = reply.get("ConsumedCapacity")
            self._count("Query", [consumed] if consumed else [])
            items.extend(reply.get("Items", []))
            last = reply.get("LastEvaluatedKey")
            if not last:
                return items
            request["ExclusiveStartKey"] = last

    def _count(self, operation: str, consumed: Sequence[ConsumedCapacityTypeDef]) -> None:
        units = sum(c.get("CapacityUnits", 0.0) for c in consumed)
        if units:
            self._capacity.add(units, {"db.operation": operation})


def _classify(error: Exception) -> StorageError | None:
    if isinstance(error, boto.ClientError):
        return translate_client_error(error)
    if isinstance(error, _INVALID_LOCAL):
        return Invalid(str(error))
    if isinstance(error, (boto.BotoCoreError, aiohttp.ClientError, OSError, TimeoutError)):
        return Unavailable(f"{type(error).__name__}: {error}")
    return None


def translate_client_error(error: boto.ClientError) -> StorageError:
    details = error.response.get("Error", {})
    code = details.get("Code", "")
    message = f"{code}: {details.get('Message', '')}"
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code in _THROTTLING:
        return Throttled(message, backend=NAME)
    if code in _UNAVAILABLE or status >= 500:
        return Unavailable(message, backend=NAME)
    return Invalid(message, backend=NAME)


# Every request to DynamoDB is made inside it: ``with translated:``.
translated: Final = Translator(NAME, _classify)
