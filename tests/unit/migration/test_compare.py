"""The pure comparison of a served answer with a shadow one."""

from __future__ import annotations

import math

import pytest

from metaas.server.migration.compare import (
    MAX_DIFF_LINES,
    Observation,
    compare_results,
    judge,
    newer_than_ms,
)
from metaas.server.model import Labels
from metaas.server.query import RangeQuery, ResultGroup, parse_stat

MINUTE = 60_000
HOUR = 60 * MINUTE
NOW = 1_800_000_000_000  # 2027-01-15 08:00 UTC, a whole hour
WEB1: Labels = (("dyno", "web.1"),)
WEB2: Labels = (("dyno", "web.2"),)


def group(labels: Labels, points: dict[int, tuple[float, ...]]) -> ResultGroup:
    """A group with one column per stat, from ``{time: (stat values...)}``."""
    times = tuple(sorted(points))
    columns = tuple(zip(*(points[t] for t in times), strict=True)) if times else ()
    return ResultGroup(labels, times, columns)


def differences(
    primary: list[ResultGroup],
    shadow: list[ResultGroup],
    stats: tuple[str, ...] = ("p50",),
    *,
    tolerance: float = 1e-9,
    newer_than: int = NOW,
    step_ms: int = MINUTE,
) -> tuple[str, ...]:
    return compare_results(
        primary,
        shadow,
        stats,
        relative_tolerance=tolerance,
        newer_than_ms=newer_than,
        step_ms=step_ms,
    )


def test_identical_answers_have_no_differences() -> None:
    answer = [group(WEB1, {NOW - 2 * MINUTE: (1.0,), NOW - MINUTE: (2.0,)})]
    assert differences(answer, list(answer)) == ()
    assert differences([], []) == ()


def test_a_difference_names_the_series_the_minute_the_stat_and_both_values() -> None:
    primary = [group(WEB1, {NOW - 2 * HOUR: (1.0,)})]
    shadow = [group(WEB1, {NOW - 2 * HOUR: (2.5,)})]
    assert differences(primary, shadow) == (
        "{dyno=web.1} 2027-01-15 06:00 p50: primary=1 shadow=2.5",
    )


@pytest.mark.parametrize(
    ("tolerance", "consistent"),
    [(1e-3, True), (9e-4, False), (0.0, False)],
)
def test_tolerance_is_relative_to_the_larger_value(tolerance: float, consistent: bool) -> None:
    # |1000 - 1001| = 1 is within 1e-3 of 1001, not within 9e-4 of it.
    primary = [group(WEB1, {NOW - HOUR: (1000.0,)})]
    shadow = [group(WEB1, {NOW - HOUR: (1001.0,)})]
    assert (differences(primary, shadow, tolerance=tolerance) == ()) is consistent


def test_values_a_rounding_error_apart_match_even_at_zero_tolerance() -> None:
    primary = [group(WEB1, {NOW - HOUR: (0.0,)})]
    shadow = [group(WEB1, {NOW - HOUR: (1e-13,)})]
    assert differences(primary, shadow, tolerance=0.0) == ()


@pytest.mark.parametrize(
    ("left", "right", "consistent"),
    [
        (math.nan, math.nan, True),
        (math.nan, 0.0, False),
        (0.0, math.nan, False),
        (math.nan, math.inf, False),
    ],
)
def test_nan_matches_only_nan(left: float, right: float, consistent: bool) -> None:
    """An empty bucket's mean is NaN on both sides: equal, not a mismatch."""
    primary = [group(WEB1, {NOW - HOUR: (left,)})]
    shadow = [group(WEB1, {NOW - HOUR: (right,)})]
    assert (differences(primary, shadow, tolerance=0.5) == ()) is consistent


def test_only_the_first_differing_stat_of_a_point_is_reported() -> None:
    primary = [group(WEB1, {NOW - HOUR: (1.0, 10.0, 100.0)})]
    shadow = [group(WEB1, {NOW - HOUR: (1.0, 20.0, 200.0)})]
    diff = differences(primary, shadow, ("count", "p50", "p99"))
    assert len(diff) == 1
    assert " p50: primary=10 shadow=20" in diff[0]


def test_series_and_points_on_one_side_only_are_differences() -> None:
    primary = [
        group(WEB1, {NOW - 3 * MINUTE: (1.0,), NOW - 5 * MINUTE: (1.0,)}),
        group(WEB2, {NOW - 4 * MINUTE: (7.0,)}),
    ]
    shadow = [group(WEB1, {NOW - 5 * MINUTE: (1.0,), NOW - 6 * MINUTE: (3.0,)})]
    assert differences(primary, shadow) == (
        "{dyno=web.1} 2027-01-15 07:54: only in shadow",
        "{dyno=web.1} 2027-01-15 07:57: only in primary",
        "{dyno=web.2} 2027-01-15 07:56: only in primary",
    )


def test_the_unlabelled_series_is_named_by_empty_braces() -> None:
    assert differences([group((), {NOW - HOUR: (1.0,)})], []) == (
        "{} 2027-01-15 07:00: only in primary",
    )


def test_differences_stop_at_the_cap_in_series_then_time_order() -> None:
    minutes = [NOW - (20 - i) * MINUTE for i in range(10)]
    primary = [
        group(WEB2, dict.fromkeys(minutes, (1.0,))),
        group(WEB1, dict.fromkeys(minutes, (1.0,))),
    ]
    shadow = [
        group(WEB2, dict.fromkeys(minutes, (2.0,))),
        group(WEB1, dict.fromkeys(minutes, (2.0,))),
    ]
    diff = differences(primary, shadow)
    assert len(diff) == MAX_DIFF_LINES
    assert all(line.startswith("{dyno=web.1} ") for line in diff)
    assert [line.split(" ")[2] for line in diff] == ["07:40", "07:41", "07:42", "07:43", "07:44"]


def test_minute_buckets_ending_after_newer_than_are_ignored() -> None:
    newer_than = NOW - 2 * MINUTE
    # The bucket at NOW - 3 min ends at newer_than: compared; later ones are not.
    primary = [group(WEB1, {NOW - 3 * MINUTE: (1.0,), NOW - 2 * MINUTE: (1.0,)})]
    shadow = [group(WEB1, {NOW - 3 * MINUTE: (1.0,), NOW - MINUTE: (9.0,)})]
    assert differences(primary, shadow, newer_than=newer_than) == ()
    late = [group(WEB1, {NOW - 3 * MINUTE: (5.0,)})]
    assert len(differences(primary, late, newer_than=newer_than)) == 1


def test_an_hour_bucket_holding_the_newest_minutes_is_ignored() -> None:
    """With hour steps, the bucket that started an hour ago ends after the
    newest minutes: both sides may still be catching up on it."""
    newer_than = NOW - 2 * MINUTE
    primary = [group(WEB1, {NOW - 2 * HOUR: (1.0,), NOW - HOUR: (1.0,)})]
    shadow = [group(WEB1, {NOW - 2 * HOUR: (1.0,), NOW - HOUR: (2.0,)})]
    assert differences(primary, shadow, newer_than=newer_than, step_ms=HOUR) == ()
    # At minute steps, the same start is an old bucket: compared.
    assert len(differences(primary, shadow, newer_than=newer_than, step_ms=MINUTE)) == 1
    # An earlier hour is compared at hour steps too.
    earlier = [group(WEB1, {NOW - 2 * HOUR: (3.0,), NOW - HOUR: (1.0,)})]
    assert differences(primary, earlier, newer_than=newer_than, step_ms=HOUR) == (
        "{dyno=web.1} 2027-01-15 06:00 p50: primary=1 shadow=3",
    )


@pytest.mark.parametrize(
    ("now_ms", "ignore", "expected"),
    [
        (NOW, 2, NOW - 2 * MINUTE),
        (NOW + 59_999, 2, NOW - 2 * MINUTE),  # the current minute has begun
        (NOW + 30_000, 0, NOW),
        (NOW + MINUTE + 1, 5, NOW - 4 * MINUTE),
    ],
)
def test_newer_than_counts_whole_minutes_back_from_the_current_one(
    now_ms: int, ignore: int, expected: int
) -> None:
    assert newer_than_ms(now_ms, ignore) == expected


STATS = tuple(s for s in map(parse_stat, ["count", "p50"]) if s is not None)
QUERY = RangeQuery("shop", "latency", (), NOW - HOUR, NOW, MINUTE, STATS, ())
ANSWER = (group(WEB1, {NOW - HOUR: (1.0, 2.0)}),)


def test_judge_is_consistent_without_differences() -> None:
    primary = Observation("old", "sqlite", 0.010, value=ANSWER)
    candidate = Observation("new", "dynamodb", 0.025, value=ANSWER)
    comparison = judge(QUERY, "shadow", NOW, primary, candidate, ())
    assert comparison.consistent
    assert (comparison.app, comparison.metric, comparison.stage, comparison.at_ms) == (
        "shop",
        "latency",
        "shadow",
        NOW,
    )
    assert (comparison.primary, comparison.candidate) == (primary, candidate)
    assert comparison.latency_delta_ms == pytest.approx(15.0)


def test_judge_keeps_the_differences() -> None:
    primary = Observation("new", "dynamodb", 0.030, value=ANSWER)
    candidate = Observation("old", "sqlite", 0.010, value=ANSWER)
    comparison = judge(QUERY, "live", NOW, primary, candidate, ("a", "b"))
    assert not comparison.consistent
    assert comparison.diff == ("a", "b")
    assert comparison.latency_delta_ms == pytest.approx(-20.0)


def test_a_failed_shadow_read_is_a_difference_of_its_own() -> None:
    primary = Observation("old", "sqlite", 0.010, value=ANSWER)
    failed = Observation("new", "dynamodb", 0.25, error="timed out after 0.25s")
    for diff in ((), ("other",)):
        comparison = judge(QUERY, "shadow", NOW, primary, failed, diff)
        assert not comparison.consistent
        assert comparison.diff == ("shadow failed: timed out after 0.25s",)
