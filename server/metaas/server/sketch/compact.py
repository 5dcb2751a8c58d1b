"""The compact encoding of a sketch (used by the distribution encoding 2), and
the varints it and the distribution use.

It writes each store densely or sparsely, whichever is smaller: sparse is the
gaps between its non-empty buckets and their counts. Sixty values of a latency
spread over about 340 buckets, of which 54 are non-empty, take 108 bytes of
counts instead of 340. (Version 1, ``Sketch.to_bytes``, writes each store's
counts densely.)
"""

from __future__ import annotations

from typing import Final

import numpy as np

from metaas.server.sketch.sketch import Sketch
from metaas.server.sketch.store import (
    COUNT_DTYPES,
    ENCODED_COUNT_TYPES,
    MAX_BUCKETS,
    Store,
    count_width,
)

# Flags of a sketch, which the distribution writes before it:
COMPACT_ZERO: Final = 1  # a zero count follows
COMPACT_POSITIVE: Final = 2  # a positive store follows
COMPACT_NEGATIVE: Final = 4  # a negative store follows
# A store decoded from bytes may span at most this many buckets before it is
# collapsed: a damaged item fails instead of allocating without bound.
_DECODED_SPAN_LIMIT: Final = 1 << 20
# A sparse store's (gap, count) pairs, by the widths of each.
_PAIRS: Final = {
    (gap, count): np.dtype([("gap", f"<u{gap}"), ("count", f"<u{count}")])
    for gap in (1, 2)
    for count in (1, 2, 4, 8)
}


def compact_flags(sketch: Sketch) -> int:
    """The flags ``write_compact`` needs the reader to be told."""
    return (
        (COMPACT_ZERO if sketch.zero_count else 0)
        | (COMPACT_POSITIVE if sketch._positive.total else 0)
        | (COMPACT_NEGATIVE if sketch._negative.total else 0)
    )


def write_compact(sketch: Sketch, out: bytearray) -> None:
    """Append the sketch in the compact encoding, its flags given apart
    (``compact_flags``): the zero count, then each non-empty store as its
    offset (zigzag varint), a varint ``n``, one byte of widths (bytes per
    count in the low half, bytes per gap in the high half, 0 for dense) and
    ``n`` counts (dense, from the offset), or ``n`` pairs of a gap and a
    count (sparse: the first gap 0, each next one the distance to the next
    non-empty bucket)."""
    if sketch.zero_count:
        write_uvarint(out, sketch.zero_count)
    for store in (sketch._positive, sketch._negative):
        if store.total:
            _write_store(store, out)


def _write_store(store: Store, out: bytearray) -> None:
    counts = store.counts
    nonzero = np.flatnonzero(counts)
    first, last = int(nonzero[0]), int(nonzero[-1])
    width = 1 if counts.itemsize == 1 else count_width(counts)
    offset = store.offset + first
    write_uvarint(out, (offset << 1) ^ (offset >> 63))  # zigzag
    span, kept = last - first + 1, nonzero.size
    # Sparse needs at least one byte per gap: only then can it be smaller.
    if kept * (width + 1) < span * width:
        gaps = np.diff(nonzero)
        gap_width = 1 if span <= 256 or int(gaps.max()) < 256 else 2
        if kept * (width + gap_width) < span * width:
            write_uvarint(out, kept)
            out.append(width | gap_width << 4)
            pairs = np.empty(kept, _PAIRS[gap_width, width])
            pairs["gap"][0] = 0
            pairs["gap"][1:] = gaps
            pairs["count"] = counts[nonzero]
            out += pairs.tobytes()
            return
    write_uvarint(out, span)
    out.append(width)
    out += counts[first : last + 1].astype(ENCODED_COUNT_TYPES[width]).tobytes()


class SparseBatch:
    """Sparse one-byte stores met while decoding many sketches, whose counts
    are placed together by :meth:`place` (a few numpy calls for the whole
    batch instead of a few per store). Until then their counts are empty."""

    __slots__ = ("_pairs", "_sizes", "_stores")

    def __init__(self) -> None:
        self._pairs: list[bytes] = []
        self._sizes: list[int] = []
        self._stores: list[Store] = []

    def defer(self, pairs: bytes, size: int, store: Store) -> None:
        """``store``'s ``size`` pairs of one-byte gap and count."""
        self._pairs.append(pairs)
        self._sizes.append(size)
        self._stores.append(store)

    def place(self) -> None:
        """Give every deferred store its counts. Raises ValueError when one
        would span more than a bounded number of buckets (a damaged item)."""
        if not self._stores:
            return
        raw = np.frombuffer(b"".join(self._pairs), np.uint8)
        sizes = np.array(self._sizes, np.int64)
        ends = np.cumsum(sizes)
        running = raw[0::2].cumsum(dtype=np.int64)
        # Each store's slots: the running sum of gaps since its first pair.
        before = np.concatenate(([0], running[ends[:-1] - 1]))
        slots = running - np.repeat(before, sizes)
        spans = slots[ends - 1] + 1
        if int(spans.max()) > _DECODED_SPAN_LIMIT:
            raise ValueError(f"bad sketch store (spans {int(spans.max())} buckets)")
        bases = np.cumsum(spans) - spans
        dense = np.zeros(int(spans.sum()), np.uint8)
        counts = raw[1::2]
        dense[slots + np.repeat(bases, sizes)] = counts
        starts = (ends - sizes).tolist()
        for store, base, span, start, end in zip(
            self._stores, bases.tolist(), spans.tolist(), starts, ends.tolist(), strict=True
        ):
            store.counts = dense[base : base + span]
            if span > MAX_BUCKETS:  # written under a wider limit: collapse it
                collapsed = Store.merged([store])
                store.offset, store.counts = collapsed.offset, collapsed.counts
            else:
                store.sparse = (slots, counts, start, end)
        self._pairs.clear()
        self._sizes.clear()
        self._stores.clear()


def read_compact(
    data: bytes, position: int, flags: int, batch: SparseBatch | None = None
) -> tuple[Sketch, int]:
    """The sketch ``write_compact`` wrote at ``position``, and where it ends.
    Raises ValueError on anything it did not write. With ``batch``, a sparse
    store of one-byte gaps and counts gets its counts from ``batch.place``."""
    sketch = Sketch.__new__(Sketch)  # every field is set below
    sketch.zero_count = 0
    if (
        flags == COMPACT_POSITIVE
        and batch is not None
        and len(data) > position + 3
        and data[position + 1] < 0x80 <= data[position]
        and data[position + 2] < 0x80
        and data[position + 3] == 0x11
    ):
        # The usual minute, inline (this runs per item of a read): positive
        # values only, a two-byte offset, under 128 one-byte pairs.
        zigzag = data[position] & 0x7F | data[position + 1] << 7
        size = data[position + 2]
        start = position + 4
        end = start + 2 * size
        if size and end <= len(data):
            store = Store((zigzag >> 1) ^ -(zigzag & 1), None, None)
            batch.defer(data[start:end], size, store)
            sketch._positive, sketch._negative = store, Store()
            return sketch, end
    if flags & COMPACT_ZERO:
        sketch.zero_count, position = read_uvarint(data, position)
    sketch._positive = sketch._negative = Store()
    if flags & COMPACT_POSITIVE:
        sketch._positive, position = _read_store(data, position, batch)
    if flags & COMPACT_NEGATIVE:
        sketch._negative, position = _read_store(data, position, batch)
    return sketch, position


def _read_store(data: bytes, position: int, batch: SparseBatch | None) -> tuple[Store, int]:
    # The varints inline when short (the usual case: this runs per item).
    if len(data) > position + 3 and data[position + 1] < 0x80 <= data[position]:
        zigzag = data[position] & 0x7F | data[position + 1] << 7
        position += 2
    else:
        zigzag, position = read_uvarint(data, position)
    offset = (zigzag >> 1) ^ -(zigzag & 1)
    if len(data) > position + 1 and data[position] < 0x80:
        size = data[position]
        position += 1
    else:
        size, position = read_uvarint(data, position)
    if position >= len(data):
        raise ValueError("sketch store cut short")
    widths = data[position]
    position += 1
    width, gap_width = widths & 0x0F, widths >> 4
    count_type = ENCODED_COUNT_TYPES.get(width)
    if count_type is None or gap_width not in (0, 1, 2) or not 0 < size <= _DECODED_SPAN_LIMIT:
        raise ValueError(f"bad sketch store (widths {widths:#x}, size {size})")
    if batch is not None and widths == 0x11:
        end = position + 2 * size
        if end > len(data):
            raise ValueError("sketch store cut short")
        store = Store(offset, None, None)
        batch.defer(data[position:end], size, store)
        return store, end
    if gap_width == 0:
        raw = np.frombuffer(data, count_type, count=size, offset=position)
        position += size * width
        counts = raw.astype(COUNT_DTYPES[width])
    elif widths == 0x11:
        # One byte each (most minutes): the pairs as plain bytes, strided.
        raw = np.frombuffer(data, np.uint8, count=2 * size, offset=position)
        position += 2 * size
        slots = raw[0::2].cumsum()
        span = int(slots[-1]) + 1
        if span > _DECODED_SPAN_LIMIT:
            raise ValueError(f"bad sketch store (spans {span} buckets)")
        counts = np.zeros(span, np.uint8)
        counts[slots] = raw[1::2]
    else:
        wide = np.frombuffer(data, _PAIRS[gap_width, width], count=size, offset=position)
        position += size * (gap_width + width)
        slots = np.cumsum(wide["gap"], dtype=np.int64)
        span = int(slots[-1]) + 1
        if span > _DECODED_SPAN_LIMIT:
            raise ValueError(f"bad sketch store (spans {span} buckets)")
        counts = np.zeros(span, COUNT_DTYPES[width])
        counts[slots] = wide["count"]
    store = Store(offset, counts, None)
    # Written under a wider limit (or not by this code): collapse it.
    return (Store.merged([store]) if counts.size > MAX_BUCKETS else store), position


def write_uvarint(out: bytearray, value: int) -> None:
    """Append a non-negative integer, 7 bits per byte, low bits first."""
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


def read_uvarint(data: bytes, position: int) -> tuple[int, int]:
    """The integer ``write_uvarint`` wrote at ``position``, and where it ends."""
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("bad or cut-short varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
