"""Storage backends behind small Protocols, selected by URL.

Each backend is a subpackage exposing two coroutines::

    async def open_backend(url: str, context: StorageContext) -> Storage
    async def apply_schema(url: str, context: StorageContext) -> str

and is imported only when its scheme is used, so its driver is never loaded
otherwise. ``open_storage`` wraps what it opens: the retention
(``retention.Retained``), then a span and metrics per call
(``instrumented.InstrumentedStorage``); a backend applies neither itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import Final, cast
from urllib.parse import urlsplit

from metaas.server.config import ConfigError
from metaas.server.storage.base import PartialReader, PartialWriter, Storage
from metaas.server.storage.context import StorageContext
from metaas.server.storage.errors import (
    Corrupt,
    Invalid,
    StorageError,
    Throttled,
    Unavailable,
)
from metaas.server.storage.instrumented import CallObserver, InstrumentedStorage
from metaas.server.storage.retention import Retained, Retention

BACKENDS: Final = {
    "sqlite": "metaas.server.storage.sqlite",
    "cassandra": "metaas.server.storage.cassandra",
    "dynamodb": "metaas.server.storage.dynamodb",
}

__all__ = [
    "BACKENDS",
    "Corrupt",
    "Invalid",
    "PartialReader",
    "PartialWriter",
    "Storage",
    "StorageContext",
    "StorageError",
    "Throttled",
    "Unavailable",
    "apply_schema",
    "open_storage",
]


def _backend(url: str, function: str) -> Callable[[str, StorageContext], Awaitable[object]]:
    scheme = urlsplit(url).scheme
    if scheme not in BACKENDS:
        raise ConfigError(
            "METAAS_STORAGE / --storage", url, "a URL with scheme " + ", ".join(BACKENDS)
        )
    module = importlib.import_module(BACKENDS[scheme])
    return cast(Callable[[str, StorageContext], Awaitable[object]], getattr(module, function))


async def open_storage(
    url: str,
    context: StorageContext,
    *,
    role: str | None = None,
    on_call: CallObserver | None = None,
) -> Storage:
    """Open the backend named by ``url`` (see the README for each scheme),
    its reads kept to the retention, with a span and latency metrics around
    every call; ``role`` (old or new during a migration) is added to both,
    and ``on_call`` sees every call."""
    backend = cast(Storage, await _backend(url, "open_backend")(url, context))
    retained = Retained(backend, Retention(context.retention_ms, context.clock))
    return InstrumentedStorage(retained, context.telemetry, role=role, on_call=on_call)


async def apply_schema(url: str, context: StorageContext) -> str:
    """Create or update the backend's schema; returns what was done."""
    return cast(str, await _backend(url, "apply_schema")(url, context))
