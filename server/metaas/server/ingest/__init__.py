"""Durable ingest: each validated write is appended to the write-ahead log
(acknowledged once on disk), aggregated into per-minute and per-hour
partials, and delivered to every backend of its migration stage; a restart
replays what was not yet stored. See docs/architecture.md ("Write path")."""

from metaas.server.ingest.idempotency import KeyReused, KeysFull, fingerprint
from metaas.server.ingest.pipeline import IngestPipeline, Overloaded
from metaas.server.ingest.records import SeriesBatch, WriteBatch
from metaas.server.ingest.wal import WalError, WalLocked

__all__ = [
    "IngestPipeline",
    "KeyReused",
    "KeysFull",
    "Overloaded",
    "SeriesBatch",
    "WalError",
    "WalLocked",
    "WriteBatch",
    "fingerprint",
]
