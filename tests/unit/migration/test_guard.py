"""The guard rail: when an app's reads fall back to the old backend, and
when they stop falling back."""

from __future__ import annotations

import pytest

from metaas.server.config import MigrationConfig
from metaas.server.migration.compare import Comparison, Observation
from metaas.server.migration.guard import Guard
from metaas.server.migration.routing import Route
from metaas.server.migration.stages import PLANS, Role, Stage
from metaas.server.migration.window import MigrationWindow
from tests.fakes import ManualClock, RecordingMeter

START = 1_800_000_000_000
FALLBACKS = "metaas.migration.fallbacks"


class Rail:
    """A guard on a clock the test moves, with what it counts."""

    def __init__(self) -> None:
        self.config = MigrationConfig(
            target_url="x://",
            guard_min_samples=5,
            guard_error_rate=0.2,
            guard_mismatch_rate=0.2,
        )
        self.clock = ManualClock(START)
        self.meter = RecordingMeter()
        self.window = MigrationWindow(
            window_s=self.config.window_s, now=self.clock.monotonic, wall_ms=self.clock.wall_ms
        )
        self.guard = Guard(self.config, self.window, meter=self.meter, clock=self.clock)

    def reads(self, stage: Stage, *, failed: int, ok: int = 0, app: str = "shop") -> None:
        for outcome in [True] * failed + [False] * ok:
            self.guard.record_read(route(stage, app), Role.NEW, failed=outcome)

    def comparisons(self, stage: Stage, *, mismatched: int, ok: int = 0) -> None:
        for consistent in [False] * mismatched + [True] * ok:
            self.guard.record_comparison(route(stage), compared(consistent))

    @property
    def tripped(self) -> list[tuple[float, dict[str, object]]]:
        return self.meter.adds(FALLBACKS)


def route(stage: Stage, app: str = "shop") -> Route:
    return Route(app, stage, PLANS[stage])


def compared(consistent: bool) -> Comparison:
    primary = Observation("new", "dynamodb", 0.01, value=())
    candidate = Observation("old", "sqlite", 0.01, value=())
    diff = () if consistent else ("differs",)
    return Comparison("shop", "latency", "live", START, primary, candidate, consistent, diff)


@pytest.mark.parametrize("stage", [Stage.LIVE, Stage.RAMPDOWN])
def test_new_backend_errors_past_the_minimum_samples_fall_back(stage: Stage) -> None:
    rail = Rail()
    rail.reads(stage, failed=4)  # every read failed, but too few to judge
    assert rail.guard.read_role(route(stage)) is Role.NEW
    assert not rail.guard.fallbacks
    rail.clock.advance(1)
    rail.reads(stage, failed=1)
    assert rail.guard.read_role(route(stage)) is Role.OLD
    fallback = rail.guard.fallbacks["shop"]
    assert (fallback.app, fallback.stage, fallback.since_ms) == ("shop", stage, START + 1000)
    assert "error rate 100.0% over 5 reads" in fallback.reason
    assert rail.tripped == [(1, {"stage": stage.value})]


def test_an_error_rate_at_the_threshold_does_not_fall_back() -> None:
    rail = Rail()
    rail.reads(Stage.LIVE, failed=1, ok=4)  # 20%: not above 20%
    assert not rail.guard.fallbacks
    rail.reads(Stage.LIVE, failed=1)  # 2 of 6
    assert "shop" in rail.guard.fallbacks


def test_old_backend_errors_do_not_count() -> None:
    rail = Rail()
    for _ in range(10):
        rail.guard.record_read(route(Stage.LIVE), Role.OLD, failed=True)
    assert not rail.guard.fallbacks


def test_mismatches_past_the_minimum_samples_fall_back() -> None:
    rail = Rail()
    rail.comparisons(Stage.LIVE, mismatched=4)
    assert not rail.guard.fallbacks
    rail.comparisons(Stage.LIVE, mismatched=0, ok=1)  # 4 of 5: 80%
    assert rail.guard.read_role(route(Stage.LIVE)) is Role.OLD
    assert "mismatch rate 80.0% over 5 comparisons" in rail.guard.fallbacks["shop"].reason
    assert rail.tripped == [(1, {"stage": "live"})]


def test_a_mismatch_rate_at_the_threshold_does_not_fall_back() -> None:
    rail = Rail()
    rail.comparisons(Stage.LIVE, mismatched=1, ok=4)
    assert not rail.guard.fallbacks


@pytest.mark.parametrize("stage", [Stage.OFF, Stage.DUALWRITE, Stage.SHADOW, Stage.COMPLETE])
def test_only_live_and_rampdown_are_guarded(stage: Stage) -> None:
    rail = Rail()
    rail.reads(stage, failed=50)
    rail.comparisons(stage, mismatched=50)
    assert not rail.guard.fallbacks
    assert rail.guard.read_role(route(stage)) is PLANS[stage].reads
    assert rail.tripped == []


def test_a_fallback_is_per_app() -> None:
    rail = Rail()
    rail.reads(Stage.LIVE, failed=5, app="bad")
    rail.reads(Stage.LIVE, failed=0, ok=5, app="good")
    assert rail.guard.read_role(route(Stage.LIVE, "bad")) is Role.OLD
    assert rail.guard.read_role(route(Stage.LIVE, "good")) is Role.NEW
    assert list(rail.guard.fallbacks) == ["bad"]


def test_a_fallback_is_sticky_until_the_stage_changes() -> None:
    rail = Rail()
    rail.reads(Stage.LIVE, failed=5)
    # The new backend recovers, and the window forgets the failures: still
    # falling back, and counted once.
    rail.reads(Stage.LIVE, failed=0, ok=100)
    rail.comparisons(Stage.LIVE, mismatched=100)
    rail.clock.advance(rail.config.window_s * 2)
    assert rail.guard.read_role(route(Stage.LIVE)) is Role.OLD
    assert len(rail.tripped) == 1


def test_a_stage_change_clears_the_fallback_with_the_apps_window() -> None:
    rail = Rail()
    rail.reads(Stage.LIVE, failed=5)
    rail.reads(Stage.LIVE, failed=5, app="other")
    assert rail.guard.read_role(route(Stage.RAMPDOWN)) is Role.NEW
    assert "shop" not in rail.guard.fallbacks
    assert rail.window.rates("shop", Role.NEW.value) == (0, 0.0, 0, 0.0)
    # Another app's window and fallback are its own.
    assert rail.window.rates("other", Role.NEW.value)[0] == 5
    assert "other" in rail.guard.fallbacks
    # The failures that tripped it are gone: one more does not trip it again.
    rail.reads(Stage.RAMPDOWN, failed=1)
    assert rail.guard.read_role(route(Stage.RAMPDOWN)) is Role.NEW
    rail.reads(Stage.RAMPDOWN, failed=4)
    assert rail.guard.fallbacks["shop"].stage is Stage.RAMPDOWN
    assert [attributes for _, attributes in rail.tripped] == [
        {"stage": "live"},
        {"stage": "live"},
        {"stage": "rampdown"},
    ]


def test_a_stage_where_falling_back_is_not_allowed_serves_the_plan() -> None:
    """Complete: the old backend no longer receives writes, so a fallback
    decided in live is dropped rather than served from stale data."""
    rail = Rail()
    rail.reads(Stage.LIVE, failed=5)
    assert rail.guard.read_role(route(Stage.COMPLETE)) is Role.NEW
    assert not rail.guard.fallbacks


def test_the_fallbacks_are_read_only() -> None:
    rail = Rail()
    rail.reads(Stage.LIVE, failed=5)
    fallbacks = rail.guard.fallbacks
    with pytest.raises(TypeError):
        del fallbacks["shop"]  # type: ignore[attr-defined]
    assert rail.guard.read_role(route(Stage.LIVE)) is Role.OLD
