"""Settings of the SQLite backend, parsed from its storage URL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs, urlsplit

from metaas.server.config import ConfigError, Settings, setting_of

_SYNCHRONOUS: Final = ("OFF", "NORMAL", "FULL")
# The URL's setting; the migration target's errors are named by app.py.
_STORAGE: Final = setting_of(Settings, "storage_url").label
_PREFIX: Final = "sqlite:///"
_FORMS: Final = "sqlite:///relative/path.db or sqlite:////absolute/path.db"


@dataclass(frozen=True, slots=True)
class SqliteConfig:
    """``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``.

    A relative path is relative to the server's working directory. Any other
    form is refused, ``sqlite:/x.db`` and ``sqlite:x.db`` too: read as a URL
    they name ``x.db`` in the working directory, while they look absolute.

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
            raise ConfigError(_STORAGE, url, "a sqlite:///path URL")
        if parts.netloc:
            raise ConfigError(_STORAGE, url, _FORMS)
        if url[: len(_PREFIX)].lower() != _PREFIX:
            # sqlite:/x.db or sqlite:x.db: say both forms it could have meant.
            name = parts.path.lstrip("/") or "x.db"
            raise ConfigError(
                _STORAGE,
                url,
                f"{_PREFIX}{name} ({name} in the working directory) or {_PREFIX}/{name} (/{name})",
            )
        path = parts.path[1:]
        if not path:
            raise ConfigError(_STORAGE, url, f"a database file path after {_PREFIX}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        synchronous = query.pop("synchronous", "NORMAL").upper()
        if synchronous not in _SYNCHRONOUS:
            raise ConfigError(
                f"{_STORAGE} option synchronous", synchronous, ", ".join(_SYNCHRONOUS)
            )
        if query:
            raise ConfigError(
                f"{_STORAGE} option", ", ".join(sorted(query)), "only the option synchronous"
            )
        return cls(Path(path), synchronous)

    def describe(self) -> str:
        """The database file, as an absolute path (for the start-up log)."""
        return f"sqlite {self.path.absolute()}"
