"""What the migration has seen lately, on a clock the test moves."""

from __future__ import annotations

import pytest

from metaas.server.migration.compare import Comparison, Observation
from metaas.server.migration.window import MigrationWindow
from tests.fakes import ManualClock

MINUTE = 60_000
START = 1_800_000_000_000  # a whole minute


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


def window_on(
    clock: ManualClock,
    *,
    window_s: float = 300.0,
    history_minutes: int = 24 * 60,
    keep_mismatches: int = 20,
) -> MigrationWindow:
    return MigrationWindow(
        window_s=window_s,
        history_minutes=history_minutes,
        keep_mismatches=keep_mismatches,
        now=clock.monotonic,
        wall_ms=clock.wall_ms,
    )


def comparison(app: str = "shop", *, consistent: bool = True, role: str = "new") -> Comparison:
    primary = Observation("old" if role == "new" else "new", "a", 0.01, value=())
    candidate = Observation(role, "b", 0.02, value=())
    diff = () if consistent else ("differs",)
    return Comparison(app, "latency", "shadow", START, primary, candidate, consistent, diff)


def test_rates_count_one_apps_reads_by_role_and_its_comparisons(clock: ManualClock) -> None:
    window = window_on(clock)
    for failed in (True, False, False, False):
        window.record_read("shop", "new", failed)
    window.record_read("shop", "old", True)  # another role
    window.record_read("bank", "new", True)  # another app
    window.record_comparison(comparison("shop", consistent=False))
    window.record_comparison(comparison("shop"))
    window.record_comparison(comparison("bank", consistent=False))
    assert window.rates("shop", "new") == (4, 0.25, 2, 0.5)
    assert window.rates("shop", "old") == (1, 1.0, 2, 0.5)
    assert window.rates("bank", "new") == (1, 1.0, 1, 1.0)
    assert window.rates("idle", "new") == (0, 0.0, 0, 0.0)


def test_the_window_slides(clock: ManualClock) -> None:
    window = window_on(clock, window_s=60.0)
    window.record_read("shop", "new", True)
    window.record_comparison(comparison(consistent=False))
    window.record_call("new", "b", "read_partials", 0.01, False)
    clock.advance(30)
    window.record_read("shop", "new", False)
    clock.advance(30)  # the first records are exactly window_s old: still in
    assert window.rates("shop", "new") == (2, 0.5, 1, 1.0)
    assert [s.reads for s in window.backends()] == [1]
    clock.advance(0.001)
    assert window.rates("shop", "new") == (1, 0.0, 0, 0.0)
    assert window.backends() == []
    clock.advance(30)
    assert window.rates("shop", "new") == (0, 0.0, 0, 0.0)
    # Totals and mismatches are not windowed.
    assert (window.total_comparisons, window.total_mismatches) == (1, 1)
    assert len(window.mismatches) == 1


def test_forget_app_starts_one_apps_window_afresh(clock: ManualClock) -> None:
    window = window_on(clock)
    for app in ("shop", "bank"):
        window.record_read(app, "new", True)
        window.record_comparison(comparison(app, consistent=False))
    window.forget_app("shop")
    assert window.rates("shop", "new") == (0, 0.0, 0, 0.0)
    assert window.rates("bank", "new") == (1, 1.0, 1, 1.0)
    # What the status reports is kept.
    assert (window.total_comparisons, window.total_mismatches) == (2, 2)
    assert [m.app for m in window.mismatches] == ["shop", "bank"]
    # New records count again.
    window.record_read("shop", "new", False)
    assert window.rates("shop", "new") == (1, 0.0, 0, 0.0)


def test_backends_summarise_calls_per_role_and_backend(clock: ManualClock) -> None:
    window = window_on(clock)
    for ms in range(1, 101):  # read latencies 1..100 ms
        window.record_call("new", "dynamodb", "read_partials", ms / 1000, False)
    window.record_call("new", "dynamodb", "read_partials", 5.0, True)  # failed: no latency
    window.record_call("new", "dynamodb", "list_series", 0.001, False)
    window.record_call("new", "dynamodb", "write_partials", 9.0, False)
    window.record_call("new", "dynamodb", "write_partials", 9.0, True)
    window.record_call("old", "sqlite", "write_partials", 0.5, False)
    new, old = window.backends()
    assert (new.role, new.backend) == ("new", "dynamodb")
    assert (new.reads, new.writes, new.read_errors, new.write_errors) == (102, 2, 1, 1)
    # Percentiles of the 101 successful reads' latencies: 1 ms, then 1..100 ms.
    assert new.p50_ms == pytest.approx(50.0)
    assert new.p95_ms == pytest.approx(95.0)
    assert new.p99_ms == pytest.approx(99.0)
    assert new.p99_ms <= 100.0  # the failed 5 s read is not a latency
    assert (old.role, old.backend, old.reads, old.writes) == ("old", "sqlite", 0, 1)
    assert (old.p50_ms, old.p95_ms, old.p99_ms) == (0.0, 0.0, 0.0)


def test_history_has_one_point_per_wall_minute_and_role(clock: ManualClock) -> None:
    window = window_on(clock, window_s=30.0)
    window.record_call("new", "b", "read_partials", 0.004, False)
    window.record_call("new", "b", "read_partials", 0.006, True)
    window.record_call("new", "b", "write_partials", 0.5, False)
    window.record_comparison(comparison(role="new", consistent=False))
    window.record_call("old", "a", "read_partials", 0.002, False)
    clock.advance(59.9)  # still the same wall minute
    window.record_comparison(comparison(role="new"))
    clock.advance(0.2)
    window.record_call("new", "b", "read_partials", 0.008, False)
    history = window.history()
    assert sorted(history) == ["new", "old"]
    first, second = history["new"]
    assert first.minute_ms == START
    assert (first.calls, first.errors, first.comparisons, first.mismatches) == (3, 1, 2, 1)
    assert first.latencies_ms == pytest.approx([4.0])  # successful reads only
    assert second.minute_ms == START + MINUTE
    assert (second.calls, second.errors, second.comparisons) == (1, 0, 0)
    assert second.latencies_ms == pytest.approx([8.0])
    (old,) = history["old"]
    assert (old.minute_ms, old.calls) == (START, 1)
    # History outlives the sliding window.
    clock.advance(3600)
    assert len(window.history()["new"]) == 2


def test_history_keeps_the_newest_minutes(clock: ManualClock) -> None:
    window = window_on(clock, history_minutes=3)
    for _ in range(5):
        window.record_call("new", "b", "read_partials", 0.001, False)
        clock.advance(60)
    minutes = [p.minute_ms for p in window.history()["new"]]
    assert minutes == [START + 2 * MINUTE, START + 3 * MINUTE, START + 4 * MINUTE]


def test_mismatches_keep_the_newest_up_to_the_bound(clock: ManualClock) -> None:
    window = window_on(clock, keep_mismatches=3)
    for i in range(5):
        window.record_comparison(comparison(f"app-{i}", consistent=False))
        window.record_comparison(comparison(f"app-{i}"))
    assert [m.app for m in window.mismatches] == ["app-2", "app-3", "app-4"]
    assert all(not m.consistent for m in window.mismatches)
    assert (window.total_comparisons, window.total_mismatches) == (10, 5)
