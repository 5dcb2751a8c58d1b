"""The per-minute aggregate: exact count, sum, min and max, plus a sketch."""

from __future__ import annotations

import math
import struct
from typing import Final

import numpy as np

from metaas.server.model import MINUTE_MS
from metaas.server.sketch import compact
from metaas.server.sketch.mapping import FloatArray, Int64Array
from metaas.server.sketch.sketch import Sketch, sketches_of_groups
from metaas.server.sketch.sketch import quantiles_of_many as quantiles_of_many_sketches

# Encoding 1: version, count, sum, min, max, then the sketch's own version 1.
_HEADER = struct.Struct("<Bqddd")
_VERSION_1: Final = 1
# Encoding 2 (written since storage schema 4 on SQLite): version, the
# sketch's flags, count as a varint, sum, min and max, then the sketch in its
# compact encoding (compact.write_compact). Both are read.
_VERSION_2: Final = 2
_STATS = struct.Struct("<ddd")
ENCODING_VERSION: Final = _VERSION_2


class Distribution:
    """A mergeable summary of a set of observations."""

    __slots__ = ("count", "max", "min", "sketch", "sum")

    def __init__(
        self,
        count: int = 0,
        total: float = 0.0,
        minimum: float = math.inf,
        maximum: float = -math.inf,
        sketch: Sketch | None = None,
    ) -> None:
        self.count = count
        self.sum = total
        self.min = minimum
        self.max = maximum
        self.sketch = sketch if sketch is not None else Sketch()

    @classmethod
    def from_values(cls, values: FloatArray) -> Distribution:
        return cls(
            int(values.size),
            float(values.sum()),
            float(values.min()),
            float(values.max()),
            Sketch.from_values(values),
        )

    def merge(self, other: Distribution) -> None:
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.sketch.merge(other.sketch)

    @classmethod
    def merged(cls, distributions: list[Distribution]) -> Distribution:
        """A new distribution equal to merging ``distributions`` in order
        into an empty one (the sum is added in that order too)."""
        if not distributions:
            return cls()
        total = distributions[0].sum
        for distribution in distributions[1:]:
            total += distribution.sum
        return cls(
            sum(d.count for d in distributions),
            total,
            min((d.min for d in distributions), default=math.inf),
            max((d.max for d in distributions), default=-math.inf),
            Sketch.merged([d.sketch for d in distributions]),
        )

    @classmethod
    def merged_groups(cls, groups: list[list[Distribution]]) -> list[Distribution]:
        """``merged`` of each group (none empty), the sketches of all groups
        merged together (``Sketch.merged_groups``): what a query does for
        the buckets of a piece it has read."""
        sketches = Sketch.merged_groups([[d.sketch for d in group] for group in groups])
        merged = []
        for group, sketch in zip(groups, sketches, strict=True):
            head = group[0]
            count, total, low, high = head.count, head.sum, head.min, head.max
            for distribution in group[1:]:
                count += distribution.count
                total += distribution.sum
                if distribution.min < low:
                    low = distribution.min
                if distribution.max > high:
                    high = distribution.max
            merged.append(cls(count, total, low, high, sketch))
        return merged

    def copy(self) -> Distribution:
        return Distribution(self.count, self.sum, self.min, self.max, self.sketch.copy())

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else math.nan

    def quantiles(self, fractions: list[float]) -> list[float]:
        """Sketch estimates, clamped to the exact min and max (so q=0 and q=1
        are exact)."""
        estimates = self.sketch.quantiles(fractions)
        return [
            self.min if q <= 0.0 else self.max if q >= 1.0 else min(max(v, self.min), self.max)
            for q, v in zip(fractions, estimates, strict=True)
        ]

    def to_bytes(self) -> bytes:
        """Encoding 2 (see ENCODING_VERSION)."""
        out = bytearray((_VERSION_2, compact.compact_flags(self.sketch)))
        compact.write_uvarint(out, self.count)
        out += _STATS.pack(self.sum, self.min, self.max)
        compact.write_compact(self.sketch, out)
        return bytes(out)

    def to_bytes_v1(self) -> bytes:
        """Encoding 1, which releases before encoding 2 read and wrote
        (``--distribution-encoding 1``)."""
        return (
            _HEADER.pack(_VERSION_1, self.count, self.sum, self.min, self.max)
            + self.sketch.to_bytes()
        )

    @classmethod
    def many_from_bytes(cls, items: list[tuple[bytes, int]]) -> list[Distribution]:
        """``from_bytes`` of each ``(data, offset)``, the counts of their small
        sparse stores placed in one pass (``compact.SparseBatch``)."""
        batch = compact.SparseBatch()
        decoded = [cls.from_bytes(data, offset, batch) for data, offset in items]
        batch.place()
        return decoded

    @classmethod
    def from_bytes(
        cls, data: bytes, offset: int = 0, batch: compact.SparseBatch | None = None
    ) -> Distribution:
        """The distribution encoded in ``data`` from ``offset`` to its end, in
        either encoding. Raises ValueError on anything else. With ``batch``,
        some stores get their counts only from ``batch.place()``."""
        try:
            version = data[offset]
            if version == _VERSION_2:
                if data[offset + 2] < 0x80:  # a count below 128: one byte
                    count, position = data[offset + 2], offset + 3
                else:
                    count, position = compact.read_uvarint(data, offset + 2)
                total, minimum, maximum = _STATS.unpack_from(data, position)
                sketch, end = compact.read_compact(
                    data, position + _STATS.size, data[offset + 1], batch
                )
                if end != len(data):
                    raise ValueError(f"{len(data) - end} bytes after the distribution")
                return cls(count, total, minimum, maximum, sketch)
            if version == _VERSION_1:
                _, count, total, minimum, maximum = _HEADER.unpack_from(data, offset)
                sketch = Sketch.from_bytes(data, offset + _HEADER.size)
                return cls(count, total, minimum, maximum, sketch)
        except (IndexError, struct.error) as error:
            raise ValueError(f"distribution cut short: {error}") from error
        raise ValueError(f"unknown distribution encoding version {version}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Distribution):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Distribution(count={self.count}, sum={self.sum}, min={self.min}, max={self.max})"


def from_samples_by_minute(
    times_ms: Int64Array, values: FloatArray
) -> list[tuple[int, Distribution]]:
    """One distribution per minute touched by the samples, ascending by minute."""
    return [
        (start, distribution)
        for _, start, distribution in by_bucket([times_ms], [values], MINUTE_MS)
    ]


def by_bucket(
    times_ms: list[Int64Array], values: list[FloatArray], bucket_ms: int
) -> list[tuple[int, int, Distribution]]:
    """``(part, bucket start, distribution)`` for each time bucket of
    ``bucket_ms`` touched by each part's samples (``times_ms[part]`` and
    ``values[part]``), ordered by part, then bucket.

    The numpy work runs once over all parts' samples (a request's series
    together); Python only loops over the (part, bucket) groups.
    """
    sizes = [t.size for t in times_ms]
    times = np.concatenate(times_ms) if len(times_ms) != 1 else times_ms[0]
    samples = np.concatenate(values) if len(values) != 1 else values[0]
    if times.size == 0:
        return []
    parts = np.repeat(np.arange(len(sizes)), sizes)
    buckets = times - np.mod(times, bucket_ms)
    if buckets.size > 1:
        # Sorted by part already; within a part, by time unless told otherwise.
        same_part = parts[1:] == parts[:-1]
        if not bool(np.all(~same_part | (buckets[1:] >= buckets[:-1]))):
            order = np.lexsort((buckets, parts))
            buckets, samples, parts = buckets[order], samples[order], parts[order]
    changes = (parts[1:] != parts[:-1]) | (buckets[1:] != buckets[:-1])
    starts = np.flatnonzero(np.concatenate(([True], changes)))
    ends = np.append(starts[1:], buckets.size)
    sums = np.add.reduceat(samples, starts).tolist()
    mins = np.minimum.reduceat(samples, starts).tolist()
    maxs = np.maximum.reduceat(samples, starts).tolist()
    sketches = sketches_of_groups(samples, starts)
    return [
        (part, bucket, Distribution(count, total, low, high, sketch))
        for part, bucket, count, total, low, high, sketch in zip(
            parts[starts].tolist(),
            buckets[starts].tolist(),
            (ends - starts).tolist(),
            sums,
            mins,
            maxs,
            sketches,
            strict=True,
        )
    ]


def quantiles_of_many(distributions: list[Distribution], fractions: list[float]) -> FloatArray:
    """``Distribution.quantiles`` of each distribution, as rows, in one pass."""
    estimates = quantiles_of_many_sketches([d.sketch for d in distributions], fractions)
    minimum = np.array([d.min for d in distributions])[:, None]
    maximum = np.array([d.max for d in distributions])[:, None]
    q = np.array(fractions, np.float64)[None, :]
    clamped = np.minimum(np.maximum(estimates, minimum), maximum)
    return np.where(q <= 0.0, minimum, np.where(q >= 1.0, maximum, clamped))
