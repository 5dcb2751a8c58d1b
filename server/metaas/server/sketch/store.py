"""The counts of one sign of a sketch: a dense run of buckets, bounded in size.

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
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from metaas.server.sketch.mapping import SCALE, Int64Array

# A store never spans more buckets than this (32 doublings); see the module
# docstring for what is collapsed beyond it. DDSketch's default bin limit.
MAX_BUCKETS: Final = 32 << SCALE

# A store's counts: one of COUNT_DTYPES.
CountArray = npt.NDArray[np.integer[Any]]

# The types of a store's counts, by bytes per count; no store holds 2**63.
COUNT_DTYPES: Final[dict[int, np.dtype[Any]]] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.uint16),
    4: np.dtype(np.uint32),
    8: np.dtype(np.int64),
}
# The little-endian type of an encoded count, by bytes per count.
ENCODED_COUNT_TYPES: Final = {width: np.dtype(f"<u{width}") for width in (1, 2, 4, 8)}

_EMPTY: Final[CountArray] = np.zeros(0, np.uint8)
_EMPTY.flags.writeable = False
# Every bucket index of a store (none spans more than MAX_BUCKETS once read).
_ARANGE: Final[Int64Array] = np.arange(MAX_BUCKETS, dtype=np.int64)
_ARANGE.flags.writeable = False


class Store:
    """Dense counts for a contiguous range of bucket indices.

    Invariants, kept by every method that builds or changes one: its first and
    last counts are non-zero (or it is empty); it spans at most MAX_BUCKETS;
    its counts are of one of COUNT_DTYPES wide enough for the largest count
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

    def copy(self) -> Store:
        return Store(self.offset, self.counts.copy(), self._total)

    def add_indices(self, indices: Int64Array) -> None:
        if indices.size == 0:
            return
        high = int(indices.max())
        low = max(int(indices.min()), high - (MAX_BUCKETS - 1))
        # Collapsed before counting, so no array spans more than MAX_BUCKETS.
        counts = np.bincount(np.maximum(indices, low) - low)
        total = int(indices.size)
        self._add_dense(low, counts.astype(narrowest_count_dtype(total), copy=False), total)

    def merge(self, other: Store) -> None:
        if other.total:
            self._add_dense(other.offset, other.counts, other.total)

    @classmethod
    def merged(cls, stores: list[Store]) -> Store:
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
        return cls(low, counts.astype(narrowest_count_dtype(total), copy=False), total)

    @classmethod
    def merged_groups(cls, groups: list[list[Store]]) -> list[Store]:
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
            merged[group] = cls(
                lowest, flat[base : base + width].astype(narrowest_count_dtype(total)), total
            )
        return merged

    def _add_dense(self, offset: int, counts: CountArray, total: int) -> None:
        """Add ``counts``, summing to ``total``, at bucket ``offset``."""
        self.sparse = None
        start = offset - self.offset
        if not self.counts.size or start < 0 or start + counts.size > self.counts.size:
            grown = Store.merged([self, Store(offset, counts, total)])
            self.offset, self.counts, self._total = grown.offset, grown.counts, grown.total
            return
        # Inside the current range: the highest bucket, hence what is
        # collapsed, stays the same.
        self._total = self.total + total
        width = max(_width_of(self._total), self.counts.itemsize, counts.itemsize)
        needed = COUNT_DTYPES[width]
        if needed != self.counts.dtype:
            self.counts = self.counts.astype(needed)
        self.counts[start : start + counts.size] += counts

    def trimmed(self) -> Store:
        """The same counts without empty buckets at either end."""
        nonzero = np.flatnonzero(self.counts)
        if nonzero.size == 0:
            return Store()
        first, last = int(nonzero[0]), int(nonzero[-1])
        return Store(self.offset + first, self.counts[first : last + 1].copy(), self._total)


def narrowest_count_dtype(total: int) -> np.dtype[Any]:
    """The narrowest count type that holds counts summing to ``total``."""
    return COUNT_DTYPES[_width_of(total)]


def count_width(counts: CountArray) -> int:
    """Bytes per count that an encoding of ``counts`` needs: the width of the
    largest."""
    return _width_of(int(counts.max()) if counts.size else 0)


def _width_of(largest: int) -> int:
    """Bytes per count for counts up to ``largest``."""
    for width in (1, 2, 4):
        if largest < 1 << (8 * width):
            return width
    return 8
