"""The embedded default backend: one SQLite file, no server needed."""

from metaas.server.storage.sqlite.backend import SqliteStorage
from metaas.server.storage.sqlite.config import SqliteConfig

__all__ = ["SqliteConfig", "SqliteStorage"]
