"""DynamoDB backend (aioboto3): ``dynamodb://TABLE?endpoint=...&region=...``.

See docs/dynamodb.md for the table design, TTL, compression and chunking,
the client tuning and the capacity metrics.
"""

from __future__ import annotations

from metaas.server.storage.context import StorageContext
from metaas.server.storage.dynamodb import schema
from metaas.server.storage.dynamodb.backend import DynamoStorage
from metaas.server.storage.dynamodb.calls import translated
from metaas.server.storage.dynamodb.config import DynamoConfig

__all__ = ["DynamoConfig", "DynamoStorage", "apply_schema", "open_backend"]


async def open_backend(url: str, context: StorageContext) -> DynamoStorage:
    """Open the shared client; fails fast if the table is missing."""
    storage = DynamoStorage(DynamoConfig.from_url(url), context)
    await storage.open()
    return storage


async def apply_schema(url: str, context: StorageContext) -> str:
    """Create the table (on-demand billing) if missing and enable TTL."""
    storage = DynamoStorage(DynamoConfig.from_url(url), context)
    client = await storage.open(check_table=False)
    try:
        with translated:
            return await schema.apply(client, storage.config.table)
    finally:
        await storage.close()
