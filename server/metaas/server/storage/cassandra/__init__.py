"""Apache Cassandra backend: ``cassandra://host:port[,host:port]/keyspace?...``.

See docs/cassandra.md for the URL options, the table design and how to run
a local node.
"""

from __future__ import annotations

import dataclasses

from metaas.server.storage.cassandra.backend import CassandraStorage
from metaas.server.storage.cassandra.config import CassandraConfig, Replication
from metaas.server.storage.context import StorageContext

__all__ = ["CassandraConfig", "CassandraStorage", "Replication", "apply_schema", "open_backend"]


async def open_backend(url: str, context: StorageContext) -> CassandraStorage:
    """Connect; apply the schema first unless the URL says ``schema=none``."""
    storage = CassandraStorage(CassandraConfig.from_url(url), context)
    await storage.open()
    return storage


async def apply_schema(url: str, context: StorageContext) -> str:
    """Create or update the keyspace and tables; returns what was done."""
    # Applying is the point here, whatever the URL's schema option says.
    config = dataclasses.replace(CassandraConfig.from_url(url), schema="auto")
    storage = CassandraStorage(config, context)
    done = await storage.open()
    await storage.close()
    hosts = ",".join(f"{host}:{port}" for host, port in config.hosts)
    return f"cassandra {hosts}/{config.keyspace}: " + "; ".join(done)
