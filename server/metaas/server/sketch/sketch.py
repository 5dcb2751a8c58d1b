"""A log-bucketed quantile sketch (the exponential histogram of OpenTelemetry and
Prometheus native histograms, at a fixed scale).

A positive value is counted in its bucket of
:mod:`~metaas.server.sketch.mapping`, which bounds the relative error of any
quantile by RELATIVE_ACCURACY (0.54%). Negative values use the same mapping on
``-v`` in a second store; exact zeros (and subnormals) are counted apart. A
store (:mod:`~metaas.server.sketch.store`) spans at most MAX_BUCKETS buckets:
what is collapsed beyond that is stated there. Sketches merge by adding counts,
so minutes, steps and writers combine without losing accuracy.

Two encodings. Version 1 (``Sketch.to_bytes``, here) writes each store's
counts densely. The compact one, used by the distribution encoding 2, is in
:mod:`~metaas.server.sketch.compact`.
"""

from __future__ import annotations

import math
import struct
from typing import Final

import numpy as np

from metaas.server.sketch.mapping import FloatArray, Int64Array, bucket_indices, bucket_values
from metaas.server.sketch.store import (
    COUNT_DTYPES,
    ENCODED_COUNT_TYPES,
    MAX_BUCKETS,
    Store,
    count_width,
    narrowest_count_dtype,
)

# Values whose magnitude is below the smallest normal double count as zero.
_MIN_MAGNITUDE: Final = float(np.finfo(np.float64).tiny)
_ENCODING_VERSION: Final = 1
_HEADER: Final = struct.Struct("<BQ")  # version, zero count
_STORE: Final = struct.Struct("<iIB")  # offset, length, bytes per count


class Sketch:
    """Counts of values per logarithmic bucket; see the module docstring."""

    __slots__ = ("_negative", "_positive", "zero_count")

    def __init__(self) -> None:
        self._positive = Store()
        self._negative = Store()
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
        result._positive = Store.merged([s._positive for s in sketches])
        result._negative = Store.merged([s._negative for s in sketches])
        result.zero_count = sum(s.zero_count for s in sketches)
        return result

    @classmethod
    def merged_groups(cls, groups: list[list[Sketch]]) -> list[Sketch]:
        """``merged`` of each group of sketches, the stores of all groups
        merged together (``Store.merged_groups``)."""
        positives = Store.merged_groups([[s._positive for s in group] for group in groups])
        if any(s._negative.counts.size for group in groups for s in group):
            negatives = Store.merged_groups([[s._negative for s in group] for group in groups])
        else:
            negatives = [Store() for _ in groups]
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
            values = bucket_values(self._positive.offset + positions)
        else:
            values = np.zeros(positions.size)
            negative = positions < n_negative
            values[negative] = -bucket_values(
                self._negative.offset + n_negative - 1 - positions[negative]
            )
            positive = positions > n_negative
            values[positive] = bucket_values(
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
            width = count_width(store.counts)
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
                stores.append(Store(start))
                continue
            count_type = ENCODED_COUNT_TYPES.get(width)
            if count_type is None:
                raise ValueError(f"bad sketch count width {width}")
            raw = np.frombuffer(data, count_type, count=length, offset=position)
            position += length * width
            store = Store(start, raw.astype(COUNT_DTYPES[width]), None)
            # Written under a wider limit (or not by this code): collapse it.
            stores.append(Store.merged([store]) if length > MAX_BUCKETS else store)
        sketch._positive, sketch._negative = stores
        return sketch

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sketch):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]  # mutable


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
    # At most MAX_BUCKETS per store, collapsed as Store.merged does: the
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
            counts = flat[base : base + width].astype(narrowest_count_dtype(total))
            sketch._positive = Store(low, counts, total)
        if i in with_negatives:
            start = int(starts[i])
            group = slice(start, start + int(lengths[i]))
            sketch._negative.add_indices(bucket_indices(magnitudes[group][negative[group]]))
        sketches.append(sketch)
    return sketches


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
        lows = bucket_values(first + positions[: len(plain)])
        highs = bucket_values(first + positions[len(plain) :])
        rows = lows + (ranks - lower) * (highs - lows)
        rows[(totals == 0).ravel()] = math.nan
        result[plain] = rows
    done = set(plain)
    for i, sketch in enumerate(sketches):
        if i not in done:
            result[i] = sketch.quantiles(fractions)
    return result
