"""DynamoDB on the emulator (moto's server mode at 127.0.0.1:8000, started by
``scripts/dynamodb.sh`` / ``make test``): a fresh table per test."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import aioboto3

from metaas.server.clock import Clock
from metaas.server.config import CodecConfig
from metaas.server.storage import Storage, StorageContext, apply_schema, open_storage
from metaas.server.telemetry import Telemetry, noop

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

ENDPOINT: Final = "http://127.0.0.1:8000"
REGION: Final = "us-east-1"
RETENTION_MS: Final = 30 * 86_400_000
# The emulator accepts any credentials; the standard provider chain finds these.
CREDENTIALS: Final = {
    "AWS_ACCESS_KEY_ID": "metaas-test",
    "AWS_SECRET_ACCESS_KEY": "metaas-test",
}


def use_test_credentials() -> None:
    for name, value in CREDENTIALS.items():
        os.environ.setdefault(name, value)


def table_url(table: str, **options: str) -> str:
    query = "&".join(
        f"{k}={v}" for k, v in {"endpoint": ENDPOINT, "region": REGION, **options}.items()
    )
    return f"dynamodb://{table}?{query}"


async def new_table(prefix: str = "conformance", **options: str) -> str:
    """Create a uniquely named table on the emulator; return its URL."""
    use_test_credentials()
    url = table_url(f"{prefix}-{uuid.uuid4().hex[:12]}", **options)
    await apply_schema(url, StorageContext(RETENTION_MS))
    return url


async def open_clean(
    tmp_path: Path,
    clock: Clock,
    *,
    codec: CodecConfig | None = None,
    telemetry: Telemetry | None = None,
) -> Storage:
    """An empty store on the emulator. Fails (never skips) when the emulator
    does not answer."""
    del tmp_path
    url = await new_table()
    context = StorageContext(
        RETENTION_MS, clock=clock, codec=codec or CodecConfig(), telemetry=telemetry or noop()
    )
    return await open_storage(url, context)


@contextlib.asynccontextmanager
async def raw_client() -> AsyncIterator[DynamoDBClient]:
    """A plain client on the emulator, to look at items as stored."""
    use_test_credentials()
    async with aioboto3.Session().client(
        "dynamodb", endpoint_url=ENDPOINT, region_name=REGION
    ) as client:
        yield client


async def scan(table: str) -> list[dict[str, Any]]:
    """Every item of a (small, test) table, as stored."""
    found: list[dict[str, Any]] = []
    async with raw_client() as client:
        paginator = client.get_paginator("scan")
        async for page in paginator.paginate(TableName=table, ConsistentRead=True):
            found.extend(page["Items"])
    return found


def table_of(url: str) -> str:
    return urlsplit(url).netloc
