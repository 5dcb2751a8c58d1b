"""The sketch: quantiles within its relative accuracy, exact merges, bounded
buckets and what is collapsed beyond them, and its version 1 encoding."""

from __future__ import annotations

import math
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from metaas.server.sketch import (
    RELATIVE_ACCURACY,
    Distribution,
    Sketch,
)
from metaas.server.sketch.mapping import BASE, SCALE, bucket_indices, bucket_value
from metaas.server.sketch.sketch import _HEADER, _STORE, sketches_of_groups
from metaas.server.sketch.store import MAX_BUCKETS, Store, narrowest_count_dtype

# A ratio of 1e9 from lowest to highest, within a store's range (about 4.2e9,
# MAX_BUCKETS), so nothing is collapsed and every quantile is within accuracy.
positive = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False)
# The same, with zeros and negatives.
finite = st.one_of(st.just(0.0), positive, positive.map(lambda v: -v))
QUANTILES = [0.0, 0.01, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0]


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 3000), elements=positive))
def test_quantiles_within_relative_accuracy_of_numpy(values: np.ndarray) -> None:
    distribution = Distribution.from_values(values)
    for q, estimate in zip(QUANTILES, distribution.quantiles(QUANTILES), strict=True):
        exact = float(np.percentile(values, q * 100))
        assert abs(estimate - exact) <= RELATIVE_ACCURACY * exact * (1 + 1e-9), (q, estimate, exact)


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 2000), elements=finite))
def test_mixed_signs_each_rank_within_accuracy(values: np.ndarray) -> None:
    """With zeros and negatives, each order statistic is still estimated
    within the relative accuracy (quantiles at whole ranks)."""
    ordered = np.sort(values)
    n = values.size
    ranks = sorted({0, n // 3, n // 2, (n - 1)})
    estimates = Sketch.from_values(values).quantiles([r / (n - 1) if n > 1 else 0.0 for r in ranks])
    for rank, estimate in zip(ranks, estimates, strict=True):
        exact = ordered[rank]
        # q * (n - 1) in floating point may miss the whole rank by an ulp, and
        # interpolating across a sign change then adds noise of that order.
        noise = 1e-12 * float(np.abs(values).max())
        assert abs(estimate - exact) <= RELATIVE_ACCURACY * abs(exact) * (1 + 1e-9) + noise, (
            rank,
            exact,
        )


@settings(max_examples=100, deadline=None)
@given(
    st.lists(hnp.arrays(np.float64, st.integers(1, 300), elements=finite), min_size=1, max_size=8)
)
def test_merge_equals_sketch_of_all_values(parts: list[np.ndarray]) -> None:
    merged = Distribution()
    for part in parts:
        merged.merge(Distribution.from_bytes(Distribution.from_values(part).to_bytes()))
    everything = np.concatenate(parts)
    direct = Distribution.from_values(everything)
    assert merged.sketch == direct.sketch
    assert merged.count == everything.size
    assert merged.min == everything.min()
    assert merged.max == everything.max()
    assert merged.sum == pytest.approx(everything.sum(), rel=1e-9, abs=1e-6)


@given(hnp.arrays(np.float64, st.integers(0, 500), elements=finite))
def test_encoding_round_trips(values: np.ndarray) -> None:
    sketch = Sketch.from_values(values)
    assert Sketch.from_bytes(sketch.to_bytes()) == sketch
    assert Sketch.from_bytes(sketch.to_bytes()).count == values.size


def test_large_counts_encode_with_wider_integers() -> None:
    sketch = Sketch.from_values(np.full(70_000, 3.0))
    for _ in range(5):
        sketch.merge(sketch.copy())
    decoded = Sketch.from_bytes(sketch.to_bytes())
    assert decoded.count == 70_000 * 32
    assert decoded.quantiles([0.5])[0] == pytest.approx(3.0, rel=RELATIVE_ACCURACY)


# Magnitudes spread over the whole accepted range (1e-300 to 1e289): almost
# every sketch of a few of them has to collapse its lowest buckets.
wide_positive = st.builds(
    lambda mantissa, exponent: mantissa * 10.0**exponent,
    st.floats(1.0, 9.99),
    st.integers(-300, 288),
)
wide = st.one_of(st.just(0.0), wide_positive, wide_positive.map(lambda v: -v))
# The factor below the largest magnitude above which nothing is collapsed.
KEPT_RATIO = BASE ** (MAX_BUCKETS - 1)


def _stores(sketch: Sketch) -> list[Store]:
    return [sketch._positive, sketch._negative]


def _collapsed_by_the_rule(magnitudes: np.ndarray) -> tuple[int, list[int]]:
    """The module docstring's rule, applied to all the values at once: every
    bucket below ``highest - (MAX_BUCKETS - 1)`` counts in that one."""
    indices = bucket_indices(magnitudes)
    floor = max(int(indices.min()), int(indices.max()) - (MAX_BUCKETS - 1))
    return floor, np.bincount(np.maximum(indices, floor) - floor).tolist()


def _merge_as_tree(sketches: list[Sketch], data: st.DataObject) -> Sketch:
    if len(sketches) == 1:
        return Sketch.from_bytes(sketches[0].to_bytes())
    split = data.draw(st.integers(1, len(sketches) - 1))
    left = _merge_as_tree(sketches[:split], data)
    left.merge(_merge_as_tree(sketches[split:], data))
    return left


@settings(max_examples=200, deadline=None)
@given(
    st.lists(hnp.arrays(np.float64, st.integers(1, 40), elements=wide), min_size=1, max_size=8),
    st.data(),
)
def test_collapsing_merges_are_exact_associative_and_order_free(
    parts: list[np.ndarray], data: st.DataObject
) -> None:
    """However wide the values, and however the merges are grouped and
    ordered, the result is the sketch of all the values at once, and that
    is the documented rule applied to them."""
    everything = np.concatenate(parts)
    direct = Sketch.from_values(everything)
    sketches = [Sketch.from_values(p) for p in parts]
    shuffled = data.draw(st.permutations(sketches))
    in_order = Sketch()
    for sketch in shuffled:
        in_order.merge(sketch)
    assert in_order == direct
    assert Sketch.merged(shuffled) == direct
    assert _merge_as_tree(data.draw(st.permutations(sketches)), data) == direct
    assert direct.count == everything.size
    for store, chosen in zip(_stores(direct), (everything > 0, everything < 0), strict=True):
        if not chosen.any():
            assert store.counts.size == 0
            continue
        floor, counts = _collapsed_by_the_rule(np.abs(everything[chosen]))
        assert (store.offset, store.counts.tolist()) == (floor, counts)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_p50_to_p999_within_accuracy_when_they_lie_within_the_kept_range(
    data: st.DataObject,
) -> None:
    """Most values within a ratio of 1e9 (inside the kept 4.2e9), fewer than
    half anywhere below: every quantile from p50 up is within accuracy."""
    top = data.draw(st.integers(-290, 280))
    bulk = 10.0 ** (
        top - data.draw(hnp.arrays(np.float64, st.integers(1, 600), elements=st.floats(0, 9)))
    )
    tail_size = data.draw(st.integers(0, bulk.size - 1))
    tail = 10.0 ** data.draw(hnp.arrays(np.float64, tail_size, elements=st.floats(-300, top - 9)))
    values = np.concatenate([bulk, tail])
    distribution = Distribution.from_values(values)
    assert max(store.counts.size for store in _stores(distribution.sketch)) <= MAX_BUCKETS
    fractions = [0.5, 0.75, 0.9, 0.99, 0.999]
    for q, estimate in zip(fractions, distribution.quantiles(fractions), strict=True):
        exact = float(np.percentile(values, q * 100))
        assert abs(estimate - exact) <= RELATIVE_ACCURACY * exact * (1 + 1e-9), (q, estimate, exact)


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float64, st.integers(2, 300), elements=wide_positive))
@example(np.array([20.0, 8.5e10]))  # 20 is in the lowest kept bucket, below its value
def test_each_order_statistic_is_accurate_or_reported_as_the_lowest_kept_bucket(
    values: np.ndarray,
) -> None:
    """The rule of the module docstring, rank by rank: a value above the
    largest divided by BASE**(MAX_BUCKETS - 1) is within accuracy, and so is
    any value in the lowest kept bucket; one in a bucket below it is reported
    as the lowest kept bucket's value, never under itself."""
    sketch = Sketch.from_values(values)
    ordered = np.sort(values)
    n = values.size
    threshold = ordered[-1] / KEPT_RATIO
    lowest_index = int(bucket_indices(ordered[-1:])[0]) - (MAX_BUCKETS - 1)
    lowest_kept = bucket_value(lowest_index)
    indices = bucket_indices(ordered)
    ranks = [r for r in range(n) if r / (n - 1) * (n - 1) == r]
    estimates = sketch.quantiles([r / (n - 1) for r in ranks])
    for rank, estimate in zip(ranks, estimates, strict=True):
        exact = float(ordered[rank])
        if exact > threshold * (1 + 1e-12):
            assert indices[rank] >= lowest_index, (rank, exact)
        if indices[rank] >= lowest_index:
            assert abs(estimate - exact) <= RELATIVE_ACCURACY * exact * (1 + 1e-9), (rank, exact)
        else:
            assert estimate == pytest.approx(lowest_kept, rel=1e-12), (rank, exact)
            assert estimate >= exact


def test_negative_values_collapse_the_magnitudes_nearest_zero() -> None:
    values = -np.array([1e-300, 1e-100, 1.0, 1e100, 1e289])
    sketch = Sketch.from_values(values)
    low, high = sketch.quantiles([0.0, 1.0])
    assert low == pytest.approx(-1e289, rel=RELATIVE_ACCURACY)
    # -1e-300 is reported as the lowest kept magnitude: further from zero.
    assert high == pytest.approx(-1e289 / KEPT_RATIO, rel=2 * RELATIVE_ACCURACY)
    assert sketch._negative.counts.size == MAX_BUCKETS


@settings(max_examples=100, deadline=None)
@given(st.lists(hnp.arrays(np.float64, st.integers(1, 60), elements=wide), min_size=1, max_size=10))
def test_wide_sketches_stay_within_max_buckets_and_bounded_bytes(
    parts: list[np.ndarray],
) -> None:
    singles = [Sketch.from_values(p) for p in parts]
    merged = Sketch()
    for sketch in singles:
        merged.merge(sketch)
    grouped = sketches_of_groups(
        np.concatenate(parts), np.cumsum([0] + [p.size for p in parts[:-1]])
    )
    # Version, zero count, then per store its header and 8 bytes per count.
    most = _HEADER.size + 2 * (_STORE.size + 8 * MAX_BUCKETS)
    for sketch in [*singles, *grouped, merged, Sketch.merged(singles)]:
        for store in _stores(sketch):
            assert store.counts.size <= MAX_BUCKETS
            # Counts take the narrowest type that holds their sum.
            assert store.total == int(store.counts.sum())
            assert store.counts.dtype == narrowest_count_dtype(store.total)
        assert len(sketch.to_bytes()) <= most


def test_rows_written_under_the_older_wider_limit_are_collapsed_when_read() -> None:
    # 120 doublings: 7,680 buckets, which the former limit of 8,192 kept.
    values = 2.0 ** np.linspace(-60.0, 60.0, 500)
    with patch("metaas.server.sketch.store.MAX_BUCKETS", 128 << SCALE):
        stored = Sketch.from_values(values).to_bytes()
    decoded = Sketch.from_bytes(stored)
    assert decoded._positive.counts.size == MAX_BUCKETS
    assert decoded == Sketch.from_values(values)
    assert len(decoded.to_bytes()) < len(stored)


def test_counts_widen_as_they_grow() -> None:
    """Counts start as one byte each and widen, in place or while the range
    grows, with the same result as counting everything at once."""
    sketch = Sketch.from_values(np.array([3.0]))
    assert sketch._positive.counts.dtype == np.uint8
    added = [np.array([3.0])]
    for more, dtype in (
        (np.full(300, 3.0), np.uint16),  # same bucket: in place
        (np.full(70_000, 3.0), np.uint32),
        (np.array([1e-3, 1e6]), np.uint32),  # a wider range
    ):
        sketch.merge(Sketch.from_values(more))
        added.append(more)
        assert sketch._positive.counts.dtype == dtype
        assert sketch == Sketch.from_values(np.concatenate(added))
    # Read from bytes, counts take the encoded width (one byte: each is at
    # most 200) and widen when a merge in place needs it.
    pairs = np.repeat([3.0, 5.0], 200)
    stored = Sketch.from_bytes(Sketch.from_values(pairs).to_bytes())
    assert stored._positive.counts.dtype == np.uint8
    stored.merge(Sketch.from_values(np.full(100, 3.0)))
    assert stored._positive.counts.dtype == np.uint16
    assert stored == Sketch.from_values(np.concatenate([pairs, np.full(100, 3.0)]))
    for _ in range(16):  # past 2**32 in one bucket
        sketch.merge(sketch.copy())
    assert sketch._positive.counts.dtype == np.int64
    assert Sketch.from_bytes(sketch.to_bytes()).count == sketch.count == 70_303 << 16


def test_empty_sketch_quantile_is_nan() -> None:
    assert math.isnan(Sketch().quantiles([0.5])[0])
