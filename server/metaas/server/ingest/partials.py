"""Pending aggregates stored as one writer's partials of one flush epoch: a
complete aggregate overwrites its row, a delta is merged into it once (see
:func:`write_pending`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol

from metaas.server.ingest.aggregator import PendingPartial
from metaas.server.model import Partial, PartialKey
from metaas.server.storage.base import PartialReader, PartialWriter

# Rows per write_partials call: bounds one backend call's size and time.
WRITE_CHUNK: Final = 500


class _ReadWrite(PartialReader, PartialWriter, Protocol):
    pass


async def write_pending(
    storage: _ReadWrite, pending: Sequence[PendingPartial], *, writer: str, epoch: int
) -> int:
    """Store ``pending`` (minutes and hourly rollups alike) as ``writer``'s
    partials of flush ``epoch``; return the number of rows written.

    Complete aggregates overwrite their row. Deltas are merged into the stored
    row unless that row already includes this epoch, which makes replaying a
    log segment after a crash apply it exactly once.
    """
    rows = [
        Partial(p.series, p.minute_ms, writer, epoch, p.distribution, p.resolution)
        for p in pending
        if p.complete
    ]
    deltas = [p for p in pending if not p.complete]
    for start in range(0, len(deltas), WRITE_CHUNK):
        chunk = deltas[start : start + WRITE_CHUNK]
        keys = [PartialKey(p.series, p.minute_ms, writer, p.resolution) for p in chunk]
        stored = await storage.get_partials(keys)
        for delta, key in zip(chunk, keys, strict=True):
            previous = stored.get(key)
            if previous is not None and previous.epoch >= epoch:
                continue
            merged = delta.distribution.copy()
            if previous is not None:
                merged.merge(previous.distribution)
            rows.append(
                Partial(delta.series, delta.minute_ms, writer, epoch, merged, delta.resolution)
            )
    for start in range(0, len(rows), WRITE_CHUNK):
        await storage.write_partials(rows[start : start + WRITE_CHUNK])
    return len(rows)
