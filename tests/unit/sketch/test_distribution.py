"""Distributions: exact count, sum, min and max beside the sketch, their
two encodings, and reading and merging many at once."""

from __future__ import annotations

import struct
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from metaas.server.sketch import (
    Distribution,
    Sketch,
    compact,
    from_samples_by_minute,
)
from metaas.server.sketch.store import MAX_BUCKETS
from tests.unit.sketch.test_sketch import finite


def test_from_samples_by_minute_groups_exactly() -> None:
    rng = np.random.default_rng(3)
    times = rng.integers(1_800_000_000_000, 1_800_000_000_000 + 7 * 60_000, 10_000)
    values = rng.lognormal(1.0, 1.0, 10_000)
    groups = from_samples_by_minute(times.astype(np.int64), values)
    minutes = times - times % 60_000
    assert [m for m, _ in groups] == sorted(set(minutes.tolist()))
    for minute, distribution in groups:
        chosen = values[minutes == minute]
        assert distribution.count == chosen.size
        assert distribution.min == chosen.min()
        assert distribution.max == chosen.max()
        assert distribution.sum == pytest.approx(chosen.sum(), rel=1e-12)
        assert distribution.sketch == Sketch.from_values(chosen)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(hnp.arrays(np.float64, st.integers(1, 300), elements=finite), min_size=1, max_size=12),
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6),
)
def test_quantiles_of_many_equal_each_distribution(
    parts: list[np.ndarray], fractions: list[float]
) -> None:
    from metaas.server.sketch.distribution import quantiles_of_many

    distributions = [Distribution.from_values(p) for p in parts]
    together = quantiles_of_many(distributions, fractions)
    for row, distribution in zip(together.tolist(), distributions, strict=True):
        assert row == pytest.approx(distribution.quantiles(fractions), rel=1e-12, abs=1e-300)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        hnp.arrays(np.float64, st.integers(1, 300), elements=st.floats(1e-3, 1e9)),
        min_size=1,
        max_size=12,
    ),
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6),
)
def test_quantiles_of_many_positive_values_take_the_one_pass_path(
    parts: list[np.ndarray], fractions: list[float]
) -> None:
    from metaas.server.sketch.distribution import quantiles_of_many

    distributions = [Distribution.from_values(p) for p in parts]
    expected = [distribution.quantiles(fractions) for distribution in distributions]
    # The one-pass path never falls back to a sketch's own quantiles.
    with patch.object(Sketch, "quantiles", side_effect=AssertionError("fell back")):
        together = quantiles_of_many(distributions, fractions)
    for row, want in zip(together.tolist(), expected, strict=True):
        assert row == pytest.approx(want, rel=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(hnp.arrays(np.float64, st.integers(1, 200), elements=finite), max_size=8))
def test_merged_equals_merging_one_by_one(parts: list[np.ndarray]) -> None:
    distributions = [Distribution.from_values(p) for p in parts]
    one_by_one = Distribution()
    for distribution in distributions:
        one_by_one.merge(distribution)
    before = [d.to_bytes() for d in distributions]
    assert Distribution.merged(distributions).to_bytes() == one_by_one.to_bytes()
    assert [d.to_bytes() for d in distributions] == before  # inputs untouched


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.integers(0, 3 * 3_600_000), st.one_of(finite, st.floats(1e-300, 1e300))),
            min_size=1,
            max_size=80,
        ),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from([60_000, 3_600_000]),
)
def test_by_bucket_equals_each_part_and_bucket_on_its_own(
    parts: list[list[tuple[int, float]]], bucket_ms: int
) -> None:
    from metaas.server.sketch.distribution import by_bucket

    times = [np.array([t for t, _ in part], np.int64) for part in parts]
    values = [np.array([v for _, v in part], np.float64) for part in parts]
    got = by_bucket(times, values, bucket_ms)
    expected = []
    magnitudes = []
    for index, (t, v) in enumerate(zip(times, values, strict=True)):
        buckets = t - t % bucket_ms
        for bucket in sorted(set(buckets.tolist())):
            chosen = v[buckets == bucket]
            expected.append((index, bucket, Distribution.from_values(chosen)))
            magnitudes.append(float(np.abs(chosen).sum()))
    assert [(p, b) for p, b, _ in got] == [(p, b) for p, b, _ in expected]
    for (_, _, mine), (_, _, theirs), magnitude in zip(got, expected, magnitudes, strict=True):
        assert (mine.count, mine.min, mine.max) == (theirs.count, theirs.min, theirs.max)
        assert mine.sketch == theirs.sketch
        # Summed in another order: the error bound is relative to the sum of
        # the magnitudes (values that cancel lose digits either way).
        assert mine.sum == pytest.approx(theirs.sum, rel=1e-9, abs=1e-12 * magnitude + 1e-300)


def test_by_bucket_folds_extreme_ranges_without_allocating_them() -> None:
    """Values 1e-300 and 1e300 in many series: each store keeps at most
    MAX_BUCKETS (the lowest folded, as Sketch.from_values does), and no
    allocation spans the unfolded range of every series."""
    import tracemalloc

    from metaas.server.sketch.distribution import by_bucket
    from metaas.server.sketch.store import MAX_BUCKETS

    series = 300
    times = [np.array([0, 1, 2], np.int64)] * series
    values = [np.array([1e-300, 1.0, 1e300])] * series
    tracemalloc.start()
    got = by_bucket(times, values, 60_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(got) == series
    expected = Sketch.from_values(values[0])
    for _, _, distribution in got:
        assert distribution.sketch == expected
        assert distribution.sketch._positive.counts.size <= MAX_BUCKETS
    # Unfolded, every series' counts would span ~127,600 buckets (1 MB each).
    assert peak < 60 * 2**20, peak


@given(hnp.arrays(np.float64, st.integers(0, 500), elements=finite))
def test_distribution_encodings_round_trip(values: np.ndarray) -> None:
    """Encoding 2 (written) and encoding 1 (what older releases stored) both
    read back to the same distribution, bit for bit."""
    distribution = Distribution.from_values(values) if values.size else Distribution()
    for encoded in (distribution.to_bytes(), distribution.to_bytes_v1()):
        decoded = Distribution.from_bytes(encoded)
        assert decoded.to_bytes() == distribution.to_bytes()
        assert decoded.to_bytes_v1() == distribution.to_bytes_v1()
        assert decoded.count == values.size
    assert distribution.to_bytes()[0] == 2


def test_encoding_2_stores_a_minute_of_latencies_in_a_third_of_encoding_1() -> None:
    """Sixty router latencies: sparse counts instead of dense; a store as
    dense as its buckets (thousands of values) stays dense, no larger."""
    rng = np.random.default_rng(3)
    minutes = [Distribution.from_values(rng.lognormal(3.0, 0.8, 60)) for _ in range(50)]
    v1 = sum(len(d.to_bytes_v1()) for d in minutes)
    v2 = sum(len(d.to_bytes()) for d in minutes)
    assert v2 < v1 * 0.4
    hours = [Distribution.from_values(rng.lognormal(3.0, 0.8, 3600)) for _ in range(10)]
    for hour in hours:
        assert len(hour.to_bytes()) <= len(hour.to_bytes_v1())


def test_encoding_2_keeps_wide_counts_and_gaps() -> None:
    """Counts past every narrower width, and gaps past 255 buckets."""
    values = np.concatenate([np.full(70_000, 3.0), [1.0, 1e6, 1e9], np.full(300, 5.0)])
    distribution = Distribution.from_values(values)
    for _ in range(5):
        distribution.merge(distribution.copy())
    decoded = Distribution.from_bytes(distribution.to_bytes())
    assert decoded.count == values.size * 32
    assert decoded.to_bytes_v1() == distribution.to_bytes_v1()


def test_a_damaged_distribution_raises_value_error_only() -> None:
    """Every truncation and single-byte change of an encoded distribution
    either decodes or raises ValueError: nothing else escapes, and nothing
    large is allocated (a store spans at most MAX_BUCKETS once read)."""
    rng = np.random.default_rng(9)
    values = np.concatenate([rng.lognormal(3.0, 0.8, 60), [-2.0, 0.0]])
    encoded = Distribution.from_values(values).to_bytes()
    damaged = [encoded[:cut] for cut in range(len(encoded))]
    for position in range(len(encoded)):
        for byte in (0x00, 0x7F, 0x80, 0xFF):
            changed = bytearray(encoded)
            changed[position] = byte
            damaged.append(bytes(changed))
    damaged.append(bytes([2, 2]) + b"\xff" * 12)  # a varint without end
    for data in damaged:
        try:
            decoded = Distribution.from_bytes(data)
        except ValueError:
            continue
        for store in (decoded.sketch._positive, decoded.sketch._negative):
            assert store.counts.size <= MAX_BUCKETS


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            hnp.arrays(np.float64, st.integers(0, 300), elements=finite),
            st.sampled_from([1, 2]),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_decoding_many_at_once_equals_decoding_each(parts: list[tuple[np.ndarray, int]]) -> None:
    """``many_from_bytes`` (small sparse stores placed in one pass) decodes
    exactly what ``from_bytes`` does, one by one, for any mix of encodings,
    store layouts and offsets into the data."""
    items = []
    for index, (values, encoding) in enumerate(parts):
        distribution = Distribution.from_values(values) if values.size else Distribution()
        encoded = distribution.to_bytes() if encoding == 2 else distribution.to_bytes_v1()
        items.append((b"\0" * index + encoded, index))
    together = Distribution.many_from_bytes(items)
    for (data, offset), decoded in zip(items, together, strict=True):
        alone = Distribution.from_bytes(data, offset)
        assert decoded.to_bytes() == alone.to_bytes()
        assert decoded.to_bytes_v1() == alone.to_bytes_v1()
        assert decoded.count == alone.count


def test_stores_decoded_together_stay_independent() -> None:
    """Counts placed in one shared array are separate stores: merging into
    one (in place, as the flusher does) leaves the others as they were."""
    rng = np.random.default_rng(12)
    originals = [Distribution.from_values(rng.lognormal(3.0, 0.8, 30)) for _ in range(3)]
    decoded = Distribution.many_from_bytes([(d.to_bytes(), 0) for d in originals])
    decoded[1].merge(decoded[1].copy())
    assert decoded[0].to_bytes() == originals[0].to_bytes()
    assert decoded[2].to_bytes() == originals[2].to_bytes()
    assert decoded[1].count == 2 * originals[1].count


def test_a_store_spanning_too_many_buckets_is_refused_alone_or_in_a_batch() -> None:
    """A damaged sparse store whose gaps add up past the decoding bound
    raises ValueError instead of allocating it, decoded alone or together."""
    out = bytearray((2, compact.COMPACT_POSITIVE))
    compact.write_uvarint(out, 5000)
    out += struct.pack("<ddd", 5000.0, 1.0, 2.0)
    compact.write_uvarint(out, 0)  # offset 0, zigzag
    compact.write_uvarint(out, 5000)  # pairs
    out.append(0x11)
    out += bytes((0xFF, 1)) * 5000  # 5000 gaps of 255 buckets
    for decode in (
        lambda: Distribution.from_bytes(bytes(out)),
        lambda: Distribution.many_from_bytes([(bytes(out), 0)]),
    ):
        with pytest.raises(ValueError, match="spans"):
            decode()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                hnp.arrays(np.float64, st.integers(1, 200), elements=finite),
                st.booleans(),  # decoded from bytes (sparse stores) or built
            ),
            min_size=1,
            max_size=6,
        ),
        min_size=1,
        max_size=20,
    )
)
def test_merging_groups_together_equals_merging_each(
    groups: list[list[tuple[np.ndarray, bool]]],
) -> None:
    """``Distribution.merged_groups`` gives each group exactly what
    ``Distribution.merged`` does (sum added in the same order), for stores
    decoded together from bytes (sparse) or built in memory (dense)."""
    built = [[Distribution.from_values(values) for values, _ in group] for group in groups]
    encoded = [(d.to_bytes(), 0) for group in built for d in group]
    decoded = iter(Distribution.many_from_bytes(encoded))
    members = [
        [next(decoded) if from_bytes else d for d, (_, from_bytes) in zip(group, spec, strict=True)]
        for group, spec in zip(built, groups, strict=True)
    ]
    together = Distribution.merged_groups(members)
    for group, merged in zip(members, together, strict=True):
        alone = Distribution.merged(group)
        assert merged.to_bytes() == alone.to_bytes()
        assert merged.to_bytes_v1() == alone.to_bytes_v1()
        assert (merged.count, merged.sum, merged.min, merged.max) == (
            alone.count,
            alone.sum,
            alone.min,
            alone.max,
        )


def test_merging_groups_collapses_wide_groups_as_merging_each() -> None:
    """Groups whose stores together span more than MAX_BUCKETS collapse
    their lowest buckets exactly as ``merged`` does."""
    wide = [
        [
            Distribution.from_values(np.array([1e-200, 3.0])),
            Distribution.from_values(np.array([1e200])),
        ],
        [Distribution.from_values(np.array([2.0, 5.0]))],
    ]
    decoded = Distribution.many_from_bytes([(d.to_bytes(), 0) for g in wide for d in g])
    groups = [decoded[:2], decoded[2:]]
    for merged, group in zip(Distribution.merged_groups(groups), groups, strict=True):
        assert merged.to_bytes() == Distribution.merged(group).to_bytes()
        assert merged.sketch._positive.counts.size <= MAX_BUCKETS
