"""Settings of the SQLite backend, parsed from its storage URL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from metaas.server.config import ConfigError

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL")


@dataclass(frozen=True, slots=True)
class SqliteConfig:
    """``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``.

    ``synchronous`` defaults to NORMAL: metaas's own write-ahead log already
    makes every acknowledged sample durable, so SQLite need not fsync each
    transaction.
    """

    path: Path
    synchronous: str = "NORMAL"

    @classmethod
    def from_url(cls, url: str) -> SqliteConfig:
        parts = urlsplit(url)
        if parts.scheme != "sqlite":
            raise ConfigError("storage", url, "a sqlite:///path URL")
        if parts.netloc:
            raise ConfigError(
                "storage", url, "sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path:
            raise ConfigError("storage", url, "a database file path after sqlite:///")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        synchronous = query.pop("synchronous", "NORMAL").upper()
        if synchronous not in _SYNCHRONOUS:
            raise ConfigError("storage synchronous", synchronous, ", ".join(_SYNCHRONOUS))
        if query:
            raise ConfigError("storage", url, "only the option synchronous")
        return cls(Path(path), synchronous)
