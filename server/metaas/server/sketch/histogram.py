"""A log-bucketed quantile sketch (the exponential histogram of OpenTelemetry and
Prometheus native histograms, at a fixed scale).

A positive value ``v`` falls in bucket ``i`` when ``BASE**i < v <= BASE**(i+1)``
with ``BASE = 2**(2**-SCALE)``. Negative values use the same mapping on ``-v``
in a second store; exact zeros (and subnormals) are counted apart. Reporting the
bucket's harmonic midpoint bounds the relative error of any quantile by
``(BASE - 1) / (BASE + 1)``: 0.54% at scale 6. Sketches merge by adding counts,
so minutes, steps and writers combine without losing accuracy.

Bounded size, and what is collapsed. A store (one per sign) never spans more
than MAX_BUCKETS = 2048 buckets: 32 doublings, a ratio of
``BASE**(MAX_BUCKETS - 1)``, about 4.2e9, between its lowest and highest kept
bucket. With ``h`` the highest non-empty bucket of everything a store has
counted, every value in a bucket below ``f = h - (MAX_BUCKETS - 1)`` is counted
in bucket ``f`` instead (DDSketch's collapsing of the lowest buckets; for
negative values, the magnitudes nearest zero). Hence:

- An order statistic whose magnitude exceeds
  ``largest / BASE**(MAX_BUCKETS - 1)`` (``largest`` being the store's
  largest magnitude, which lies in bucket ``h``, so above ``BASE**h``) lies
  in bucket ``f`` or higher, and is still estimated within
  RELATIVE_ACCURACY: collapsing only moves counts from below ``f`` into
  ``f``, so the bucket in which each such rank falls is unchanged. A quantile
  is within it when the two order statistics it interpolates are; for p50 to
  p99.9 that holds unless the largest magnitude of the quantile's sign is
  more than about 4.2e9 times the quantile's.
- A smaller one in bucket ``f`` itself is still within RELATIVE_ACCURACY;
  one in a bucket below ``f`` is reported as bucket ``f``'s value, about
  ``largest / 4.2e9``: its magnitude is overestimated, never under
  (:class:`~metaas.server.sketch.distribution.Distribution` then clamps every
  estimate to the exact minimum and maximum).
- Collapsing maps each bucket ``i`` to ``max(i, f)``. The ``f`` used by any
  partial merge is at most the final one, and ``max(max(i, f1), f2) =
  max(i, f2)`` for ``f1 <= f2``, so merges in any grouping and order give the
  same counts as a sketch of all the values at once: merges stay exact and
  associative.

Counts are dense per store, of the narrowest of uint8, uint16, uint32 and
int64 that holds their sum: a store of fewer than 256 values, however
scattered, takes at most 2 KiB, and any store at most 16 KiB.

Two encodings. Version 1 (``to_bytes``) writes each store's counts densely.
The compact one (``write_compact``, used by the distribution encoding 2)
writes each store densely or sparsely, whichever is smaller: sparse is the
gaps between its non-empty buckets and their counts. Sixty values of a
latency spread over about 340 buckets, of which 54 are non-empty, take 108
bytes of counts instead of 340.

Bucket indexing is vectorized with numpy; there is no per-sample Python loop.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Final

import numpy as np
import numpy.typing as npt

SCALE: Final = 6
BASE: Final = 2.0 ** (2.0**-SCALE)
RELATIVE_ACCURACY: Final = (BASE - 1.0) / (BASE + 1.0)
# Values whose magnitude is below the smallest normal double count as zero.
_MIN_MAGNITUDE: Final = float(np.finfo(np.float64).tiny)
# A store never spans more buckets than this (32 doublings); see the module
# docstring for what is collapsed beyond it. DDSketch's default bin limit.
MAX_BUCKETS: Final = 32 << SCALE
_ENCODING_VERSION: Final = 1
_HEADER: Final = struct.Struct("<BQ")  # version, zero count
_STORE: Final = struct.Struct("<iIB")  # offset, length, bytes per count

Int64Array = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
# A store's counts: one of _COUNT_DTYPES.
CountArray = npt.NDArray[np.integer[Any]]


def bucket_indices(magnitudes: FloatArray) -> Int64Array:
    """Bucket index of each strictly positive magnitude."""
    return np.ceil(np.log2(magnitudes) * float(1 << SCALE)).astype(np.int64) - 1


def bucket_value(index: int) -> float:
    """The value reported for a bucket: its harmonic midpoint."""
    lower = BASE**index
    return 2.0 * lower * BASE / (1.0 + BASE)


def _bucket_values(indices: Int64Array) -> FloatArray:
    """``bucket_value`` of each index."""
    return np.power(BASE, indices.astype(np.float64)) * (2.0 * BASE / (1.0 + BASE))


class _Store:
    """Dense counts for a contiguous range of bucket indices.

    Invariants, kept by every method that builds or changes one: its first and
    last counts are non-zero (or it is empty); it spans at most MAX_BUCKETS;
    its counts are of one of _COUNT_DTYPES wide enough for the largest count
    (the narrowest for their sum, ``total``, where this code chose it; from
    bytes, the encoded width). Adding counts in place first widens the type to
    hold the sum of both totals, so no count can overflow.
    """

    __slots__ = ("_total", "counts", "offset", "sparse")

    def __init__(
        self, offset: int = 0, counts: CountArray | None = None, total: int | None = 0
    ) -> None:
        self.offset = offset
        # The shared empty array is never written: every change replaces it.
        self.counts: CountArray = counts if counts is not None else _EMPTY
        # None until first needed, for stores read from bytes: most of those
        # are only read, and summing each would cost as much as decoding it.
        self._total = total
        # For a store decoded from sparse pairs and not changed since: the
        # indices (from ``offset``) of its non-empty buckets and their
        # counts, which ``merged_groups`` reads instead of every bucket, as
        # ``indices[start:end]`` and ``counts[start:end]`` of its batch's.
        self.sparse: tuple[Int64Array, CountArray, int, int] | None = None

    @property
    def total(self) -> int:
        """The sum of the counts."""
        if self._total is None:
            self._total = int(self.counts.sum(dtype=np.int64))
        return self._total

    def copy(self) -> _Store:
        return _Store(self.offset, self.counts.copy(), self._total)

    def add_indices(self, indices: Int64Array) -> None:
        if indices.size == 0:
            return
        high = int(indices.max())
        low = max(int(indices.min()), high - (MAX_BUCKETS - 1))
        # Collapsed before counting, so no array spans more than MAX_BUCKETS.
        counts = np.bincount(np.maximum(indices, low) - low)
        total = int(indices.size)
        self._add_dense(low, counts.astype(_narrowest(total), copy=False), total)

    def merge(self, other: _Store) -> None:
        if other.total:
            self._add_dense(other.offset, other.counts, other.total)

    @classmethod
    def merged(cls, stores: list[_Store]) -> _Store:
        """A new store holding the sum of ``stores``, with the lowest buckets
        collapsed as the module docstring states. Nothing it allocates spans
        more than MAX_BUCKETS."""
        full = [s for s in stores if s.counts.size]
        if not full:
            return cls()
        high = max(s.offset + s.counts.size for s in full)
        low = max(min(s.offset for s in full), high - MAX_BUCKETS)
        counts = np.zeros(high - low, np.int64)
        for store in full:
            below = low - store.offset  # how many of its buckets collapse
            if below > 0:
                counts[0] += int(store.counts[:below].sum(dtype=np.int64))
                kept = store.counts[below:]
                counts[: kept.size] += kept
            else:
                counts[-below : -below + store.counts.size] += store.counts
        total = int(counts.sum())
        return cls(low, counts.astype(_narrowest(total), copy=False), total)

    @classmethod
    def merged_groups(cls, groups: list[list[_Store]]) -> list[_Store]:
        """``merged`` of each group, in a few numpy passes over the counts of
        every store together: a sparse store (``sparse``) gives only its
        non-empty buckets, any other every bucket."""
        slots: list[Int64Array] = []
        values: list[CountArray] = []
        sizes: list[int] = []
        offsets: list[int] = []
        ends: list[int] = []
        owners: list[int] = []
        for group, stores in enumerate(groups):
            for store in stores:
                counts = store.counts
                if not counts.size:
                    continue
                sparse = store.sparse
                if sparse is None:
                    slots.append(_ARANGE[: counts.size])
                    values.append(counts)
                    sizes.append(counts.size)
                else:
                    indices, kept, start, end = sparse
                    slots.append(indices[start:end])
                    values.append(kept[start:end])
                    sizes.append(end - start)
                offsets.append(store.offset)
                ends.append(store.offset + counts.size)
                owners.append(group)
        merged = [cls() for _ in groups]
        if not owners:
            return merged
        owner = np.array(owners, np.int64)
        first = np.array(offsets, np.int64)
        size = np.array(sizes, np.int64)
        # Stores are listed group by group: each group's run of them.
        runs = np.flatnonzero(np.concatenate(([True], owner[1:] != owner[:-1])))
        run = np.repeat(np.arange(runs.size), np.diff(np.append(runs, owner.size)))
        high = np.maximum.reduceat(np.array(ends, np.int64), runs)
        low = np.maximum(np.minimum.reduceat(first, runs), high - MAX_BUCKETS)
        widths = high - low
        bases = np.cumsum(widths) - widths
        # A count at index i of a store lands at base + offset + i - low of
        # its group, or at base when that bucket is below low (collapsed).
        slot = np.concatenate(slots) + np.repeat(bases[run] + first - low[run], size)
        if bool((first < low[run]).any()):
            slot = np.maximum(slot, np.repeat(bases[run], size))
        weights = np.concatenate(values, dtype=np.float64)
        # Float weights add integers exactly below 2**53 (9e15 values).
        flat = np.bincount(slot, weights, int(widths.sum())).astype(np.int64)
        totals = np.add.reduceat(flat, bases).tolist()
        for group, base, width, total, lowest in zip(
            owner[runs].tolist(), bases.tolist(), widths.tolist(), totals, low.tolist(), strict=True
        ):
            merged[group] = cls(lowest, flat[base : base + width].astype(_narrowest(total)), total)
        return merged

    def _add_dense(self, offset: int, counts: CountArray, total: int) -> None:
        """Add ``counts``, summing to ``total``, at bucket ``offset``."""
        self.sparse = None
        start = offset - self.offset
        if not self.counts.size or start < 0 or start + counts.size > self.counts.size:
            grown = _Store.merged([self, _Store(offset, counts, total)])
            self.offset, self.counts, self._total = grown.offset, grown.counts, grown.total
            return
        # Inside the current range: the highest bucket, hence what is
        # collapsed, stays the same.
        self._total = self.total + total
        width = max(_width_of(self._total), self.counts.itemsize, counts.itemsize)
        needed = _COUNT_DTYPES[width]
        if needed != self.counts.dtype:
            self.counts = self.counts.astype(needed)
        self.counts[start : start + counts.size] += counts

    def trimmed(self) -> _Store:
        """The same counts without empty buckets at either end."""
        nonzero = np.flatnonzero(self.counts)
        if nonzero.size == 0:
            return _Store()
        first, last = int(nonzero[0]), int(nonzero[-1])
        return _Store(self.offset + first, self.counts[first : last + 1].copy(), self._total)


class Sketch:
    """Counts of values per logarithmic bucket; see the module docstring."""

    __slots__ = ("_negative", "_positive", "zero_count")

    def __init__(self) -> None:
        self._positive = _Store()
        self._negative = _Store()
        self.zero_count = 0

    @classmethod
    def from_values(cls, values: FloatArray) -> Sketch:
        sketch = cls()
        sketch.add(values)
        return sketch

    @property
    def count(self) -> int:
        return self._positive.total + self._negative.total + self.zero_count

    def add(self, values: FloatArray) -> None:
        """Add finite values (the caller rejects NaN and infinities)."""
        magnitudes = np.abs(values)
        significant = magnitudes >= _MIN_MAGNITUDE
        self.zero_count += int(values.size - np.count_nonzero(significant))
        positive = significant & (values > 0)
        self._positive.add_indices(bucket_indices(magnitudes[positive]))
        negative = significant & (values < 0)
        if negative.any():
            self._negative.add_indices(bucket_indices(magnitudes[negative]))

    def merge(self, other: Sketch) -> None:
        self._positive.merge(other._positive)
        self._negative.merge(other._negative)
        self.zero_count += other.zero_count

    @classmethod
    def merged(cls, sketches: list[Sketch]) -> Sketch:
        """A new sketch equal to merging every one of ``sketches`` into an
        empty one, with one allocation per store instead of one per merge."""
        result = cls()
        result._positive = _Store.merged([s._positive for s in sketches])
        result._negative = _Store.merged([s._negative for s in sketches])
        result.zero_count = sum(s.zero_count for s in sketches)
        return result

    @classmethod
    def merged_groups(cls, groups: list[list[Sketch]]) -> list[Sketch]:
        """``merged`` of each group of sketches, the stores of all groups
        merged together (``_Store.merged_groups``)."""
        positives = _Store.merged_groups([[s._positive for s in group] for group in groups])
        if any(s._negative.counts.size for group in groups for s in group):
            negatives = _Store.merged_groups([[s._negative for s in group] for group in groups])
        else:
            negatives = [_Store() for _ in groups]
        merged = []
        for group, positive, negative in zip(groups, positives, negatives, strict=True):
            sketch = cls.__new__(cls)
            sketch._positive, sketch._negative = positive, negative
            sketch.zero_count = sum(s.zero_count for s in group)
            merged.append(sketch)
        return merged

    def copy(self) -> Sketch:
        twin = Sketch()
        twin._positive = self._positive.copy()
        twin._negative = self._negative.copy()
        twin.zero_count = self.zero_count
        return twin

    def quantiles(self, fractions: list[float]) -> list[float]:
        """Estimate each quantile (0 <= q <= 1) as numpy's default
        ``percentile`` defines it: at rank ``r = q * (count - 1)``, between the
        values of ranks ``floor(r)`` and ``ceil(r)``. Each of those two is
        within RELATIVE_ACCURACY of the true order statistic, so their linear
        interpolation is within it of the true quantile too."""
        n_negative = self._negative.counts.size
        plain = n_negative == 0 and self.zero_count == 0
        # Buckets in ascending value order: negatives from the largest
        # magnitude down, then zero, then positives.
        counts = (
            self._positive.counts
            if plain
            else np.concatenate(
                [
                    self._negative.counts[::-1],
                    np.array([self.zero_count], np.int64),
                    self._positive.counts,
                ]
            )
        )
        cumulative = np.cumsum(counts, dtype=np.int64)
        total = int(cumulative[-1]) if cumulative.size else 0
        if total == 0:
            return [math.nan] * len(fractions)
        ranks = np.array(fractions, np.float64) * (total - 1)
        lower = np.floor(ranks)
        upper = np.minimum(lower + 1, total - 1)
        positions = np.searchsorted(cumulative, np.concatenate([lower, upper]), side="right")
        if plain:
            values = _bucket_values(self._positive.offset + positions)
        else:
            values = np.zeros(positions.size)
            negative = positions < n_negative
            values[negative] = -_bucket_values(
                self._negative.offset + n_negative - 1 - positions[negative]
            )
            positive = positions > n_negative
            values[positive] = _bucket_values(
                self._positive.offset + positions[positive] - n_negative - 1
            )
        low, high = values[: ranks.size], values[ranks.size :]
        result: list[float] = (low + (ranks - lower) * (high - low)).tolist()
        return result

    def to_bytes(self) -> bytes:
        """Compact encoding: version, zero count, then each store as offset,
        length, width of a count in bytes, and little-endian counts."""
        parts = [_HEADER.pack(_ENCODING_VERSION, self.zero_count)]
        for store in (self._positive.trimmed(), self._negative.trimmed()):
            width = _count_width(store.counts)
            parts.append(_STORE.pack(store.offset, store.counts.size, width))
            parts.append(store.counts.astype(f"<u{width}").tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, offset: int = 0) -> Sketch:
        """The sketch encoded in ``data`` from ``offset`` to its end."""
        version, zero_count = _HEADER.unpack_from(data, offset)
        if version != _ENCODING_VERSION:
            raise ValueError(f"unknown sketch encoding version {version}")
        sketch = cls.__new__(cls)  # both stores are set below
        sketch.zero_count = zero_count
        position = offset + _HEADER.size
        stores = []
        for _ in range(2):
            start, length, width = _STORE.unpack_from(data, position)
            position += _STORE.size
            if length == 0:
                stores.append(_Store(start))
                continue
            count_type = _COUNT_TYPES.get(width)
            if count_type is None:
                raise ValueError(f"bad sketch count width {width}")
            raw = np.frombuffer(data, count_type, count=length, offset=position)
            position += length * width
            store = _Store(start, raw.astype(_COUNT_DTYPES[width]), None)
            # Written under a wider limit (or not by this code): collapse it.
            stores.append(_Store.merged([store]) if length > MAX_BUCKETS else store)
        sketch._positive, sketch._negative = stores
        return sketch

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sketch):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]  # mutable


# The compact encoding (version 2 of the distribution). Flags of a sketch:
COMPACT_ZERO: Final = 1  # a zero count follows
COMPACT_POSITIVE: Final = 2  # a positive store follows
COMPACT_NEGATIVE: Final = 4  # a negative store follows
# A store decoded from bytes may span at most this many buckets before it is
# collapsed: a damaged item fails instead of allocating without bound.
_DECODED_SPAN_LIMIT: Final = 1 << 20


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


def _write_store(store: _Store, out: bytearray) -> None:
    counts = store.counts
    nonzero = np.flatnonzero(counts)
    first, last = int(nonzero[0]), int(nonzero[-1])
    width = 1 if counts.itemsize == 1 else _count_width(counts)
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
    out += counts[first : last + 1].astype(_COUNT_TYPES[width]).tobytes()


class SparseBatch:
    """Sparse one-byte stores met while decoding many sketches, whose counts
    are placed together by :meth:`place` (a few numpy calls for the whole
    batch instead of a few per store). Until then their counts are empty."""

    __slots__ = ("_pairs", "_sizes", "_stores")

    def __init__(self) -> None:
        self._pairs: list[bytes] = []
        self._sizes: list[int] = []
        self._stores: list[_Store] = []

    def defer(self, pairs: bytes, size: int, store: _Store) -> None:
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
                collapsed = _Store.merged([store])
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
            store = _Store((zigzag >> 1) ^ -(zigzag & 1), None, None)
            batch.defer(data[start:end], size, store)
            sketch._positive, sketch._negative = store, _Store()
            return sketch, end
    if flags & COMPACT_ZERO:
        sketch.zero_count, position = read_uvarint(data, position)
    sketch._positive = sketch._negative = _Store()
    if flags & COMPACT_POSITIVE:
        sketch._positive, position = _read_store(data, position, batch)
    if flags & COMPACT_NEGATIVE:
        sketch._negative, position = _read_store(data, position, batch)
    return sketch, position


def _read_store(data: bytes, position: int, batch: SparseBatch | None) -> tuple[_Store, int]:
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
    count_type = _COUNT_TYPES.get(width)
    if count_type is None or gap_width not in (0, 1, 2) or not 0 < size <= _DECODED_SPAN_LIMIT:
        raise ValueError(f"bad sketch store (widths {widths:#x}, size {size})")
    if batch is not None and widths == 0x11:
        end = position + 2 * size
        if end > len(data):
            raise ValueError("sketch store cut short")
        store = _Store(offset, None, None)
        batch.defer(data[position:end], size, store)
        return store, end
    if gap_width == 0:
        raw = np.frombuffer(data, count_type, count=size, offset=position)
        position += size * width
        counts = raw.astype(_COUNT_DTYPES[width])
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
        counts = np.zeros(span, _COUNT_DTYPES[width])
        counts[slots] = wide["count"]
    store = _Store(offset, counts, None)
    # Written under a wider limit (or not by this code): collapse it.
    return (_Store.merged([store]) if counts.size > MAX_BUCKETS else store), position


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


def sketches_of_groups(values: FloatArray, starts: Int64Array) -> list[Sketch]:
    """One sketch per group of ``values``; group ``i`` is
    ``values[starts[i]:starts[i + 1]]`` (the last runs to the end), and no
    group is empty. Equal to ``Sketch.from_values`` of each group, with numpy
    work over all values at once and Python work only per group."""
    size, groups = values.size, starts.size
    lengths = np.diff(np.append(starts, size))
    magnitudes = np.abs(values)
    significant = magnitudes >= _MIN_MAGNITUDE
    zeros = np.add.reduceat((~significant).astype(np.int64), starts).tolist()
    positive = significant & (values > 0)
    negative = significant & (values < 0)
    indices = np.zeros(size, np.int64)
    indices[positive] = bucket_indices(magnitudes[positive])
    unset = np.iinfo(np.int64).max
    lows = np.minimum.reduceat(np.where(positive, indices, unset), starts)
    highs = np.maximum.reduceat(np.where(positive, indices, -unset), starts)
    present = lows != unset
    owner = np.repeat(np.arange(groups), lengths)
    # At most MAX_BUCKETS per store, collapsed as _Store.merged does: the
    # lowest indices count in the lowest bucket kept, before anything is
    # allocated.
    floors = np.where(present, highs - (MAX_BUCKETS - 1), 0)
    lows = np.where(present, np.maximum(lows, floors), 0)
    indices = np.maximum(indices, floors[owner])
    widths = np.where(present, highs - lows + 1, 0)
    bases = np.cumsum(widths) - widths
    slots = (bases - lows)[owner] + indices
    flat = np.bincount(slots[positive], minlength=int(widths.sum()))
    totals = np.add.reduceat(positive, starts, dtype=np.int64)
    with_negatives = set(np.flatnonzero(np.maximum.reduceat(negative, starts)).tolist())
    sketches = []
    for i, (low, width, base, total, zero) in enumerate(
        zip(lows.tolist(), widths.tolist(), bases.tolist(), totals.tolist(), zeros, strict=True)
    ):
        sketch = Sketch()
        sketch.zero_count = zero
        if width:
            # A copy: a view would keep the whole request's array alive.
            counts = flat[base : base + width].astype(_narrowest(total))
            sketch._positive = _Store(low, counts, total)
        if i in with_negatives:
            start = int(starts[i])
            group = slice(start, start + int(lengths[i]))
            sketch._negative.add_indices(bucket_indices(magnitudes[group][negative[group]]))
        sketches.append(sketch)
    return sketches


_EMPTY: Final[CountArray] = np.zeros(0, np.uint8)
_EMPTY.flags.writeable = False
# Every bucket index of a store (none spans more than MAX_BUCKETS once read).
_ARANGE: Final[Int64Array] = np.arange(MAX_BUCKETS, dtype=np.int64)
_ARANGE.flags.writeable = False
_COUNT_TYPES: Final = {width: np.dtype(f"<u{width}") for width in (1, 2, 4, 8)}
# A sparse store's (gap, count) pairs, by the widths of each.
_PAIRS: Final = {
    (gap, count): np.dtype([("gap", f"<u{gap}"), ("count", f"<u{count}")])
    for gap in (1, 2)
    for count in (1, 2, 4, 8)
}
# The types of a store's counts, by bytes per count; no store holds 2**63.
_COUNT_DTYPES: Final[dict[int, np.dtype[Any]]] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.uint16),
    4: np.dtype(np.uint32),
    8: np.dtype(np.int64),
}


def _narrowest(total: int) -> np.dtype[Any]:
    """The narrowest count type that holds counts summing to ``total``."""
    return _COUNT_DTYPES[_width_of(total)]


def _count_width(counts: CountArray) -> int:
    return _width_of(int(counts.max()) if counts.size else 0)


def _width_of(largest: int) -> int:
    """Bytes per count for counts up to ``largest``."""
    for width in (1, 2, 4):
        if largest < 1 << (8 * width):
            return width
    return 8


def quantiles_of_many(sketches: list[Sketch], fractions: list[float]) -> FloatArray:
    """``Sketch.quantiles`` of each sketch, as rows; the same results as
    calling each sketch's ``quantiles``.

    Sketches of positive values only (the common case) are answered in one
    numpy pass: their counts side by side in one array, one running sum, and
    one ``searchsorted`` for every rank of every sketch. Counts are never
    negative, so the running sum over all of them is sorted, and a rank of
    sketch ``r`` shifted by the counts of the sketches before it lands inside
    sketch ``r``'s own buckets. The others are answered one by one.
    """
    result = np.empty((len(sketches), len(fractions)))
    plain = [
        i
        for i, s in enumerate(sketches)
        if s._negative.counts.size == 0 and s.zero_count == 0 and s._positive.counts.size
    ]
    if plain and fractions:
        stores = [sketches[i]._positive for i in plain]
        sizes = np.fromiter((s.counts.size for s in stores), np.int64, len(stores))
        offsets = np.fromiter((s.offset for s in stores), np.int64, len(stores))
        counts = np.concatenate([s.counts for s in stores], dtype=np.int64)
        cumulative = np.cumsum(counts, out=counts)
        ends = np.cumsum(sizes)
        starts = ends - sizes
        through = cumulative[ends - 1]
        before = np.concatenate(([0], through[:-1]))  # counts of the sketches before
        totals = (through - before)[:, None]
        ranks = np.array(fractions, np.float64)[None, :] * (totals - 1)
        lower = np.floor(ranks)
        upper = np.minimum(lower + 1, totals - 1)
        shift = before[:, None]
        positions = np.searchsorted(
            cumulative,
            np.concatenate([lower.astype(np.int64) + shift, upper.astype(np.int64) + shift]),
            side="right",
        )
        first = (offsets - starts)[:, None]
        lows = _bucket_values(first + positions[: len(plain)])
        highs = _bucket_values(first + positions[len(plain) :])
        rows = lows + (ranks - lower) * (highs - lows)
        rows[(totals == 0).ravel()] = math.nan
        result[plain] = rows
    done = set(plain)
    for i, sketch in enumerate(sketches):
        if i not in done:
            result[i] = sketch.quantiles(fractions)
    return result
