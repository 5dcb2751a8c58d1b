"""The embedded default backend: one SQLite file, no server needed."""

from __future__ import annotations

from metaas.server.storage.context import StorageContext
from metaas.server.storage.sqlite.backend import SqliteStorage
from metaas.server.storage.sqlite.config import SqliteConfig

__all__ = ["SqliteConfig", "SqliteStorage", "apply_schema", "open_backend"]


async def open_backend(url: str, context: StorageContext) -> SqliteStorage:
    storage = SqliteStorage(SqliteConfig.from_url(url), context)
    await storage.open()
    return storage


async def apply_schema(url: str, context: StorageContext) -> str:
    storage = await open_backend(url, context)
    await storage.close()
    return f"sqlite schema is current in {storage.path}"
