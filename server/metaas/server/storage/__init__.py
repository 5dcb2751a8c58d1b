"""Storage backends behind small Protocols, selected by URL."""

from __future__ import annotations

from urllib.parse import urlsplit

from metaas.server.clock import Clock
from metaas.server.config import ConfigError
from metaas.server.storage.base import PartialReader, PartialWriter, Storage
from metaas.server.storage.errors import Invalid, StorageError, Throttled, Unavailable

SCHEMES = ("sqlite",)

__all__ = [
    "SCHEMES",
    "Invalid",
    "PartialReader",
    "PartialWriter",
    "Storage",
    "StorageError",
    "Throttled",
    "Unavailable",
    "open_storage",
]


async def open_storage(url: str, *, retention_ms: int, clock: Clock) -> Storage:
    """Open the backend named by ``url`` (see the README for each scheme)."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from metaas.server.storage.sqlite import SqliteConfig, SqliteStorage

        storage = SqliteStorage(SqliteConfig.from_url(url), retention_ms=retention_ms, clock=clock)
        await storage.open()
        return storage
    raise ConfigError("METAAS_STORAGE / --storage", url, "a URL with scheme " + ", ".join(SCHEMES))
