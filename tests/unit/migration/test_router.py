"""One pass of a query through the migration router: the served read, the
shadow check beside it, and what is published, with a scripted engine and
shadow (no storage), and the two real shadows reaching one comparison."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from metaas.server.config import CodecConfig, MigrationConfig
from metaas.server.migration.compare import Comparison, Observation, judge
from metaas.server.migration.flags import FixedFlags
from metaas.server.migration.guard import Guard
from metaas.server.migration.publisher import Publisher
from metaas.server.migration.router import MigrationRouter
from metaas.server.migration.routing import Route, Routing
from metaas.server.migration.shadow import LoopShadow, Shadow, WorkerShadow, observe
from metaas.server.migration.shadow_pool import ShadowPool, setup_of
from metaas.server.migration.stages import Role, Stage
from metaas.server.migration.window import MigrationWindow
from metaas.server.model import Partial, SeriesKey
from metaas.server.query import QueryEngine, RangeQuery, ResultGroup, ResultTooLarge, parse_stat
from metaas.server.sketch import Distribution
from metaas.server.storage import Storage, StorageContext, open_storage
from metaas.server.storage.errors import Unavailable
from tests.conformance.conftest import RETENTION_MS
from tests.fakes import FixedClock, RecordingMeter, RecordingSpan

MINUTE = 60_000
NOW = 1_800_000_000_000
STATS = tuple(s for s in map(parse_stat, ["count", "p99"]) if s is not None)
QUERY = RangeQuery("shop", "latency", (), NOW - 60 * MINUTE, NOW, MINUTE, STATS, ())
SKIPPED = "metaas.migration.shadow_skipped"


def answer(value: float) -> tuple[ResultGroup, ...]:
    return (ResultGroup((), (NOW - 30 * MINUTE,), ((1.0,), (value,))),)


class Named:
    """A backend the scripted engine stands in for: only its name is read."""

    def __init__(self, name: str) -> None:
        self.name = name


OLD_DB = cast("Storage", Named("old-db"))
NEW_DB = cast("Storage", Named("new-db"))


@dataclass
class Reply:
    groups: tuple[ResultGroup, ...] = ()
    error: Exception | None = None
    gate: asyncio.Event | None = None  # answers once set


class ScriptedEngine:
    """Answers each backend's reads as scripted, and notes which started
    and which were cancelled."""

    def __init__(self, old: Reply, new: Reply) -> None:
        self.replies = {id(OLD_DB): old, id(NEW_DB): new}
        self.started: list[str] = []
        self.cancelled: list[str] = []

    async def query_range(self, storage: Storage, query: RangeQuery) -> list[ResultGroup]:
        reply = self.replies[id(storage)]
        self.started.append(storage.name)
        try:
            if reply.gate is not None:
                await reply.gate.wait()
            else:
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.cancelled.append(storage.name)
            raise
        if reply.error is not None:
            raise reply.error
        return list(reply.groups)


Verdict = Callable[[Route, Role, RangeQuery, Observation], Awaitable[Comparison | None]]


async def agreeing(route: Route, role: Role, query: RangeQuery, primary: Observation) -> Comparison:
    candidate = Observation(role.value, "new-db", primary.duration_s + 0.005, value=primary.value)
    return judge(query, route.stage.value, NOW, primary, candidate, ())


async def differing(
    route: Route, role: Role, query: RangeQuery, primary: Observation
) -> Comparison:
    candidate = Observation(role.value, "new-db", primary.duration_s, value=())
    return judge(query, route.stage.value, NOW, primary, candidate, ("differs",))


async def saturated(
    route: Route, role: Role, query: RangeQuery, primary: Observation
) -> Comparison | None:
    return None


class FakeRead:
    def __init__(self, route: Route, role: Role, query: RangeQuery, verdict: Verdict) -> None:
        self.route = route
        self.role = role
        self.query = query
        self._verdict = verdict
        self.cancelled = False
        self.primaries: list[Observation] = []

    def cancel(self) -> None:
        self.cancelled = True

    async def verdict(self, primary: Observation) -> Comparison | None:
        self.primaries.append(primary)
        return await self._verdict(self.route, self.role, self.query, primary)


class FakeShadow:
    def __init__(self, verdict: Verdict = agreeing) -> None:
        self.verdict = verdict
        self.reads: list[FakeRead] = []

    def start(self, route: Route, role: Role, query: RangeQuery) -> FakeRead:
        read = FakeRead(route, role, query, self.verdict)
        self.reads.append(read)
        return read


class Rig:
    """A router over the scripted engine, with what it published."""

    def __init__(
        self,
        stage: Stage,
        engine: ScriptedEngine,
        shadow: FakeShadow | None = None,
        *,
        ratio: float = 1.0,
        sample: float = 0.0,
        guard_min_samples: int = 20,
    ) -> None:
        self.engine = engine
        self.meter = RecordingMeter()
        self.config = MigrationConfig(target_url="x://", guard_min_samples=guard_min_samples)
        self.routing = Routing(OLD_DB, NEW_DB, FixedFlags(stage, ratio))
        self.window = MigrationWindow()
        clock = FixedClock(NOW)
        self.guard = Guard(self.config, self.window, meter=self.meter, clock=clock)
        self.fake_shadow = shadow or FakeShadow()
        engine_ = cast("QueryEngine", engine)
        self.loop_shadow = LoopShadow(engine_, self.routing, self.config, clock)
        self.router = self.with_shadow(self.fake_shadow, sample)

    def with_shadow(self, shadow: Shadow, sample: float = 0.0) -> MigrationRouter:
        return MigrationRouter(
            self.routing,
            self.guard,
            engine=cast("QueryEngine", self.engine),
            shadow=shadow,
            publisher=Publisher(self.meter),
            sample=lambda: sample,
        )

    @property
    def skipped(self) -> list[tuple[float, dict[str, object]]]:
        return self.meter.adds(SKIPPED)


async def until(check: Callable[[], bool]) -> None:
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not met")


async def test_a_failed_served_read_cancels_the_shadow_and_counts_it_skipped() -> None:
    rig = Rig(Stage.SHADOW, ScriptedEngine(Reply(error=Unavailable("down")), Reply(answer(1))))
    span = RecordingSpan()
    with pytest.raises(Unavailable):
        await rig.router.query_range(QUERY, span)
    (read,) = rig.fake_shadow.reads
    assert read.cancelled
    assert read.primaries == []
    assert span.attributes == {"metaas.compare.skipped": "served read failed"}
    assert rig.skipped == [(1, {"stage": "shadow", "reason": "served read failed"})]
    assert rig.window.rates("shop", "old") == (1, 1.0, 0, 0.0)


async def test_a_caller_that_cancels_cancels_the_shadow_and_counts_it_skipped() -> None:
    rig = Rig(Stage.SHADOW, ScriptedEngine(Reply(gate=asyncio.Event()), Reply(answer(1))))
    span = RecordingSpan()
    query = asyncio.create_task(rig.router.query_range(QUERY, span))
    await until(lambda: rig.engine.started == ["old-db"])
    query.cancel()
    with pytest.raises(asyncio.CancelledError):
        await query
    (read,) = rig.fake_shadow.reads
    assert read.cancelled
    assert span.attributes == {"metaas.compare.skipped": "served read cancelled"}
    assert rig.skipped == [(1, {"stage": "shadow", "reason": "served read cancelled"})]


async def test_a_refused_answer_cancels_the_shadow() -> None:
    too_large = ResultTooLarge(values=10, limit=5, groups=1, buckets=5, stats=2)
    rig = Rig(Stage.SHADOW, ScriptedEngine(Reply(error=too_large), Reply(answer(1))))
    span = RecordingSpan()
    with pytest.raises(ResultTooLarge):
        await rig.router.query_range(QUERY, span)
    assert rig.fake_shadow.reads[0].cancelled
    assert rig.skipped == [(1, {"stage": "shadow", "reason": "served read refused"})]
    assert span.attributes["metaas.compare.skipped"] == "served read refused"


async def test_a_live_read_that_fails_is_answered_by_the_old_backend_unshadowed() -> None:
    rig = Rig(Stage.LIVE, ScriptedEngine(Reply(answer(2)), Reply(error=Unavailable("down"))))
    span = RecordingSpan()
    routed = await rig.router.query_range(QUERY, span)
    assert routed.groups == list(answer(2))
    assert (routed.served_by, routed.stage, routed.comparison) == ("old-db", Stage.LIVE, None)
    assert rig.engine.started == ["new-db", "old-db"]
    assert rig.fake_shadow.reads[0].cancelled
    assert rig.skipped == [(1, {"stage": "live", "reason": "served read failed"})]
    assert rig.window.rates("shop", "new")[:2] == (1, 1.0)
    assert rig.window.rates("shop", "old")[:2] == (1, 0.0)


async def test_a_check_the_workers_skipped_is_counted() -> None:
    rig = Rig(Stage.SHADOW, ScriptedEngine(Reply(answer(1)), Reply()), FakeShadow(saturated))
    span = RecordingSpan()
    routed = await rig.router.query_range(QUERY, span)
    assert routed.comparison is not None
    assert await routed.comparison is None
    assert span.attributes == {"metaas.compare.skipped": "shadow workers saturated"}
    assert rig.skipped == [(1, {"stage": "shadow", "reason": "shadow workers saturated"})]
    assert rig.meter.adds("metaas.migration.comparisons") == []
    assert rig.window.total_comparisons == 0


async def test_the_comparison_is_published_on_the_span_it_is_given() -> None:
    """Not on whatever span is current when the comparison finishes."""
    rig = Rig(Stage.SHADOW, ScriptedEngine(Reply(answer(1)), Reply()), FakeShadow(differing))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    span = RecordingSpan()
    with provider.get_tracer("tests").start_as_current_span("ambient"):
        routed = await rig.router.query_range(QUERY, span)
        assert routed.comparison is not None
        comparison = await routed.comparison
    assert comparison is not None
    assert span.attributes == {
        "metaas.compare.consistent": False,
        "metaas.compare.latency_delta_ms": comparison.latency_delta_ms,
        "metaas.compare.primary_backend": "old-db",
        "metaas.compare.shadow_backend": "new-db",
        "metaas.compare.shadow_error": False,
    }
    (ambient,) = exporter.get_finished_spans()
    assert not [key for key in ambient.attributes or {} if key.startswith("metaas.")]
    # The served answer is what the shadow was compared with.
    (read,) = rig.fake_shadow.reads
    assert read.primaries[0].value == answer(1)
    assert (read.primaries[0].role, read.primaries[0].backend) == ("old", "old-db")
    assert rig.meter.adds("metaas.migration.comparisons") == [
        (1, {"stage": "shadow", "consistent": False})
    ]
    assert rig.meter.adds("metaas.migration.mismatches") == [(1, {"stage": "shadow"})]
    assert list(rig.window.mismatches) == [comparison]
    assert rig.skipped == []


@pytest.mark.parametrize(
    ("ratio", "sample", "checked"),
    [(0.5, 0.49, True), (0.5, 0.5, False), (0.0, 0.0, False), (1.0, 0.999, True)],
)
async def test_a_share_of_the_reads_is_checked(ratio: float, sample: float, checked: bool) -> None:
    rig = Rig(Stage.SHADOW, ScriptedEngine(Reply(answer(1)), Reply()), ratio=ratio, sample=sample)
    routed = await rig.router.query_range(QUERY, RecordingSpan())
    assert (routed.comparison is not None) is checked
    assert len(rig.fake_shadow.reads) == int(checked)
    if checked:
        assert rig.fake_shadow.reads[0].role is Role.NEW


@pytest.mark.parametrize("stage", [Stage.OFF, Stage.DUALWRITE, Stage.RAMPDOWN, Stage.COMPLETE])
async def test_no_shadow_where_the_plan_has_none(stage: Stage) -> None:
    rig = Rig(stage, ScriptedEngine(Reply(answer(1)), Reply(answer(1))))
    routed = await rig.router.query_range(QUERY, RecordingSpan())
    assert routed.comparison is None
    assert rig.fake_shadow.reads == []
    assert len(rig.engine.started) == 1


async def test_an_app_that_fell_back_is_read_from_the_old_backend_unshadowed() -> None:
    rig = Rig(
        Stage.LIVE,
        ScriptedEngine(Reply(answer(2)), Reply(error=Unavailable("down"))),
        guard_min_samples=1,
    )
    await rig.router.query_range(QUERY, RecordingSpan())
    assert rig.router.authoritative("shop") is Role.OLD
    rig.engine.started.clear()
    routed = await rig.router.query_range(QUERY, RecordingSpan())
    assert rig.engine.started == ["old-db"]
    assert routed.comparison is None
    assert len(rig.fake_shadow.reads) == 1  # the first query's only


async def test_drain_waits_for_comparisons_still_running() -> None:
    released = asyncio.Event()

    async def slow(route: Route, role: Role, query: RangeQuery, primary: Observation) -> Comparison:
        await released.wait()
        return await agreeing(route, role, query, primary)

    rig = Rig(Stage.SHADOW, ScriptedEngine(Reply(answer(1)), Reply()), FakeShadow(slow))
    await rig.router.query_range(QUERY, RecordingSpan())
    drained = asyncio.create_task(rig.router.drain())
    await asyncio.sleep(0.01)
    assert not drained.done()
    released.set()
    await asyncio.wait_for(drained, 1.0)
    assert rig.window.total_comparisons == 1


# -- the in-loop shadow: its read stops with the served one -------------------


async def test_a_failed_served_read_cancels_the_in_loop_shadow_read() -> None:
    served = Reply(error=Unavailable("down"), gate=asyncio.Event())
    rig = Rig(Stage.SHADOW, ScriptedEngine(served, Reply(answer(1), gate=asyncio.Event())))
    router = rig.with_shadow(rig.loop_shadow)
    span = RecordingSpan()
    query = asyncio.create_task(router.query_range(QUERY, span))
    await until(lambda: sorted(rig.engine.started) == ["new-db", "old-db"])
    assert served.gate is not None
    served.gate.set()
    with pytest.raises(Unavailable):
        await query
    await until(lambda: rig.engine.cancelled == ["new-db"])
    assert rig.skipped == [(1, {"stage": "shadow", "reason": "served read failed"})]


async def test_a_cancelled_caller_cancels_the_in_loop_shadow_read() -> None:
    rig = Rig(
        Stage.SHADOW,
        ScriptedEngine(Reply(gate=asyncio.Event()), Reply(answer(1), gate=asyncio.Event())),
    )
    router = rig.with_shadow(rig.loop_shadow)
    query = asyncio.create_task(router.query_range(QUERY, RecordingSpan()))
    await until(lambda: sorted(rig.engine.started) == ["new-db", "old-db"])
    query.cancel()
    with pytest.raises(asyncio.CancelledError):
        await query
    await until(lambda: sorted(rig.engine.cancelled) == ["new-db", "old-db"])
    assert rig.skipped == [(1, {"stage": "shadow", "reason": "served read cancelled"})]


async def test_the_in_loop_shadow_compares_with_the_served_answer() -> None:
    rig = Rig(Stage.SHADOW, ScriptedEngine(Reply(answer(1)), Reply(answer(7))))
    router = rig.with_shadow(rig.loop_shadow)
    routed = await router.query_range(QUERY, RecordingSpan())
    assert routed.comparison is not None
    comparison = await routed.comparison
    assert comparison is not None
    assert not comparison.consistent
    assert comparison.diff == ("{} 2027-01-15 07:30 p99: primary=1 shadow=7",)
    assert (comparison.candidate.role, comparison.candidate.backend) == ("new", "new-db")


# -- both real shadows, one comparison ----------------------------------------


async def _fill(url: str, minutes: list[int], differs_at: set[int]) -> None:
    storage = await open_storage(url, StorageContext(RETENTION_MS))
    series = SeriesKey.of("shop", "latency", {"dyno": "web.1"})
    values = np.random.default_rng(1).lognormal(3, 1, 50)
    partials = [
        Partial(
            series,
            minute,
            "w1",
            1,
            Distribution.from_values(np.append(values, 1e6) if minute in differs_at else values),
        )
        for minute in minutes
    ]
    await storage.write_partials(partials)
    await storage.close()


@pytest.fixture
async def two_stores(tmp_path: Path) -> tuple[str, str, int]:
    """An old and a new store, on real time (the worker's engine reads its
    clock): the new one differs in an older minute and in the newest one."""
    now = time.time_ns() // 1_000_000 // MINUTE * MINUTE
    old, new = f"sqlite:///{tmp_path / 'old.db'}", f"sqlite:///{tmp_path / 'new.db'}"
    minutes = [now - (30 - i) * MINUTE for i in range(10)] + [now - MINUTE]
    await _fill(old, minutes, set())
    await _fill(new, minutes, {minutes[3], now - MINUTE})
    return old, new, now


async def test_loop_and_worker_shadows_reach_the_same_comparison(
    two_stores: tuple[str, str, int],
) -> None:
    old_url, new_url, now = two_stores
    context = StorageContext(RETENTION_MS)
    old, new = await open_storage(old_url, context), await open_storage(new_url, context)
    pool = ShadowPool(
        setup_of(
            {Role.OLD: old_url, Role.NEW: new_url}, retention_ms=RETENTION_MS, codec=CodecConfig()
        ),
        workers=1,
    )
    await pool.start()
    try:
        clock = FixedClock(now)
        config = MigrationConfig(target_url=new_url, shadow_timeout_s=30.0)
        engine = QueryEngine(retention_ms=RETENTION_MS, clock=clock)
        routing = Routing(old, new, FixedFlags(Stage.SHADOW, 1.0))
        route = routing.route("shop")
        query = RangeQuery("shop", "latency", (), now - 60 * MINUTE, now, MINUTE, STATS, ())
        primary, error = await observe(engine, routing, Role.OLD, query)
        assert error is None
        shadows: list[Shadow] = [
            LoopShadow(engine, routing, config, clock),
            WorkerShadow(pool, routing, config, clock),
        ]
        verdicts = {}
        for role in (Role.OLD, Role.NEW):
            in_loop, in_worker = [
                await shadow.start(route, role, query).verdict(primary) for shadow in shadows
            ]
            assert in_loop is not None
            assert in_worker is not None
            assert in_worker.candidate.duration_s > 0
            assert (
                in_worker.consistent,
                in_worker.diff,
                in_worker.candidate.role,
                in_worker.candidate.backend,
                in_worker.candidate.error,
                in_worker.primary,
                in_worker.stage,
                in_worker.at_ms,
            ) == (
                in_loop.consistent,
                in_loop.diff,
                in_loop.candidate.role,
                in_loop.candidate.backend,
                in_loop.candidate.error,
                in_loop.primary,
                in_loop.stage,
                in_loop.at_ms,
            )
            verdicts[role] = in_loop
        assert verdicts[Role.OLD].consistent
        # The older minute differs; the newest one is not compared.
        (line,) = verdicts[Role.NEW].diff
        assert "count: primary=50 shadow=51" in line
    finally:
        await pool.close()
        await old.close()
        await new.close()
