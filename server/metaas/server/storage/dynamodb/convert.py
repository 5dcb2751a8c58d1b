"""From stored payloads to partials and series: pure CPU work, which the
backend runs on a thread when the payloads are large."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

from metaas.server.model import (
    MINUTE_MS,
    Partial,
    PartialKey,
    Resolution,
    SeriesKey,
    decode_labels,
)
from metaas.server.storage import codec
from metaas.server.storage.dynamodb import items, schema
from metaas.server.storage.dynamodb.calls import Key

if TYPE_CHECKING:
    from metaas.server.storage.dynamodb.items import Item

# Whatever cannot be decoded raises the codec's Corrupt.
Stored = Mapping[Key, tuple["Item", bytes]]


def partials_of(
    app: str,
    metric: str,
    stored: Stored,
    resolution: Resolution = Resolution.MINUTE,
    wanted: Collection[str] | None = None,
) -> list[Partial]:
    """The blocks' partials; only those of the series whose labels key is in
    ``wanted`` when it is given (the others' distributions stay encoded)."""
    found: list[tuple[SeriesKey, int, str, int]] = []
    encoded: list[tuple[bytes, int]] = []
    series_of: dict[str, SeriesKey] = {}
    for (_, sk), (_, data) in stored.items():
        minute, writer = schema.parse_block_sk(sk)
        for labels, (epoch, distribution) in block_entries(data).items():
            if wanted is not None and labels not in wanted:
                continue
            series = series_of.get(labels)
            if series is None:
                series = series_of[labels] = SeriesKey(app, metric, decode_labels(labels))
            found.append((series, minute, writer, epoch))
            encoded.append((distribution, 0))
    distributions = codec.distributions_of(encoded)
    partials = [
        Partial(series, minute, writer, epoch, distribution, resolution)
        for (series, minute, writer, epoch), distribution in zip(found, distributions, strict=True)
    ]
    # The order SQLite returns, so merged float sums agree bit for bit.
    partials.sort(key=lambda p: (p.minute_ms, p.series.labels_key, p.writer))
    return partials


def pick(wanted: Mapping[Key, list[PartialKey]], stored: Stored) -> dict[PartialKey, Partial]:
    found: dict[PartialKey, Partial] = {}
    for block, keys in wanted.items():
        if block not in stored:
            continue
        entries = block_entries(stored[block][1])
        for key in keys:
            entry = entries.get(key.series.labels_key)
            if entry is not None:
                epoch, distribution = entry
                found[key] = Partial(
                    key.series,
                    key.minute_ms,
                    key.writer,
                    epoch,
                    codec.distribution_of(distribution),
                    key.resolution,
                )
    return found


def series_in(stored: Stored, first_ms: int, last_ms: int) -> set[tuple[str, str]]:
    """(metric, labels_key) of catalog entries with a minute in [first, last]."""
    found: set[tuple[str, str]] = set()
    for (_, sk), (_, data) in stored.items():
        hour, metric, _writer = schema.parse_catalog_sk(sk)
        low = max(0, -(-(first_ms - hour) // MINUTE_MS))
        high = min(59, (last_ms - hour) // MINUTE_MS)
        if low > high:
            continue
        window = ((1 << (high + 1)) - 1) ^ ((1 << low) - 1)
        entries = catalog_entries(data)
        found.update((metric, labels) for labels, mask in entries.items() if mask & window)
    return found


def block_entries(data: bytes) -> items.BlockEntries:
    with codec.decoding("block item"):
        return items.decode_block(codec.decode(data))


def catalog_entries(data: bytes) -> items.CatalogEntries:
    with codec.decoding("catalog item"):
        return items.decode_catalog(codec.decode(data))
