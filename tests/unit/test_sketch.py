from __future__ import annotations

import math
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from metaas.server.sketch import RELATIVE_ACCURACY, Distribution, Sketch, from_samples_by_minute
from metaas.server.sketch.histogram import MAX_BUCKETS

positive = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False)
# Within a store's dynamic range (MAX_BUCKETS), with zeros and negatives.
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


def test_extreme_range_is_bounded_in_size() -> None:
    values = np.array([1e-300, 1e-100, 1.0, 1e100, 1e300])
    sketch = Sketch.from_values(values)
    assert sketch.count == 5
    assert len(sketch.to_bytes()) < 8 * MAX_BUCKETS
    # The highest values keep their accuracy; the lowest were folded upwards.
    assert sketch.quantiles([1.0])[0] == pytest.approx(1e300, rel=RELATIVE_ACCURACY)


def test_empty_sketch_quantile_is_nan() -> None:
    assert math.isnan(Sketch().quantiles([0.5])[0])


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
    for index, (t, v) in enumerate(zip(times, values, strict=True)):
        buckets = t - t % bucket_ms
        for bucket in sorted(set(buckets.tolist())):
            chosen = v[buckets == bucket]
            expected.append((index, bucket, Distribution.from_values(chosen)))
    assert [(p, b) for p, b, _ in got] == [(p, b) for p, b, _ in expected]
    for (_, _, mine), (_, _, theirs) in zip(got, expected, strict=True):
        assert (mine.count, mine.min, mine.max) == (theirs.count, theirs.min, theirs.max)
        assert mine.sketch == theirs.sketch
        assert mine.sum == pytest.approx(theirs.sum, rel=1e-9, abs=1e-300)


def test_by_bucket_folds_extreme_ranges_without_allocating_them() -> None:
    """Values 1e-300 and 1e300 in many series: each store keeps at most
    MAX_BUCKETS (the lowest folded, as Sketch.from_values does), and no
    allocation spans the unfolded range of every series."""
    import tracemalloc

    from metaas.server.sketch.distribution import by_bucket
    from metaas.server.sketch.histogram import MAX_BUCKETS

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
