"""The migration router with real SQLite backends and injected faults."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from metaas.server.config import MigrationConfig
from metaas.server.migration.flags import FixedFlags
from metaas.server.migration.stages import Stage
from metaas.server.model import Partial, Resolution, SeriesKey
from metaas.server.query import RangeQuery, parse_stat
from metaas.server.sketch import Distribution
from metaas.server.storage import Storage, StorageContext, Unavailable, open_storage
from metaas.server.telemetry import noop
from tests.conformance.conftest import RETENTION_MS, FixedClock
from tests.migration.support import Rig

MINUTE = 60_000
NOW = 1_800_000_000_000


class Faulty:
    """Wraps a storage: reads wait ``delay_s`` and then fail when ``failing``."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.delay_s = 0.0
        self.failing = False

    @property
    def name(self) -> str:
        return "faulty-" + self.inner.name

    async def read_partials(self, *args: Any) -> Sequence[Partial]:
        await asyncio.sleep(self.delay_s)
        if self.failing:
            raise Unavailable("injected failure", backend=self.name)
        return await self.inner.read_partials(*args)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)


@pytest.fixture
async def backends(tmp_path: Path) -> AsyncIterator[tuple[Storage, Faulty]]:
    clock = FixedClock(NOW)
    old = await open_storage(
        f"sqlite:///{tmp_path / 'old.db'}", StorageContext(RETENTION_MS, clock=clock)
    )
    new = await open_storage(
        f"sqlite:///{tmp_path / 'new.db'}", StorageContext(RETENTION_MS, clock=clock)
    )
    partial = Partial(
        SeriesKey.of("app", "m"),
        NOW - 10 * MINUTE,
        "w",
        1,
        Distribution.from_values(np.array([1.0, 2.0, 3.0])),
    )
    await old.write_partials([partial])
    await new.write_partials([partial])
    yield old, Faulty(new)
    await old.close()
    await new.close()


def router(old: Storage, new: Storage, stage: Stage, **config: Any) -> Rig:
    config_ = MigrationConfig(target_url="x://", **config)
    return Rig.of(old, new, FixedFlags(stage, 1.0), config_, FixedClock(NOW))


QUERY = RangeQuery(
    "app",
    "m",
    (),
    NOW - 60 * MINUTE,
    NOW,
    MINUTE,
    tuple(s for s in map(parse_stat, ["count", "p50"]) if s),
    (),
)


async def test_slow_shadow_never_delays_beyond_its_timeout(
    backends: tuple[Storage, Faulty],
) -> None:
    old, new = backends
    new.delay_s = 2.0
    r = router(old, new, Stage.SHADOW, shadow_timeout_s=0.2)
    started = time.perf_counter()
    routed = await r.query_range(QUERY)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.1, elapsed  # the answer does not wait for the shadow
    assert routed.groups[0].values[0] == (3.0,)
    assert routed.comparison is not None
    comparison = await routed.comparison
    assert time.perf_counter() - started < 0.2 + 0.1  # nor does the comparison, past its timeout
    assert not comparison.consistent
    assert comparison.candidate.error is not None
    assert "timed out" in comparison.candidate.error


async def test_failing_shadow_never_fails_a_query(backends: tuple[Storage, Faulty]) -> None:
    old, new = backends
    new.failing = True
    r = router(old, new, Stage.SHADOW)
    for _ in range(5):
        routed = await r.query_range(QUERY)
        assert routed.groups[0].values[0] == (3.0,)
    await r.drain()
    assert r.guard.window.total_comparisons == 5
    assert r.guard.window.total_mismatches == 5


async def test_consistent_backends_compare_equal(backends: tuple[Storage, Faulty]) -> None:
    old, new = backends
    r = router(old, new, Stage.LIVE)
    routed = await r.query_range(QUERY)
    assert routed.served_by == new.name
    assert routed.comparison is not None
    comparison = await routed.comparison
    assert comparison.consistent
    assert comparison.primary.role == "new"
    assert comparison.candidate.role == "old"


async def test_guard_rail_falls_back_when_the_new_backend_fails(
    backends: tuple[Storage, Faulty],
) -> None:
    old, new = backends
    new.failing = True
    r = router(old, new, Stage.LIVE, guard_min_samples=5)
    for _ in range(5):
        routed = await r.query_range(QUERY)  # each answered by the old backend
        assert routed.served_by == "sqlite"
        assert routed.groups[0].values[0] == (3.0,)
    assert "app" in r.guard.fallbacks
    assert "error rate" in r.guard.fallbacks["app"].reason
    new.failing = False
    routed = await r.query_range(QUERY)
    assert routed.served_by == "sqlite"  # sticky until an operator changes the stage
    r.routing.flags = FixedFlags(Stage.RAMPDOWN, 1.0)
    routed = await r.query_range(QUERY)
    assert routed.served_by == new.name
    assert "app" not in r.guard.fallbacks


async def test_no_fallback_once_the_old_backend_stops_receiving_writes(
    backends: tuple[Storage, Faulty],
) -> None:
    old, new = backends
    new.failing = True
    r = router(old, new, Stage.COMPLETE)
    with pytest.raises(Unavailable):
        await r.query_range(QUERY)


async def test_deadline_cancels_a_slow_backend_read(backends: tuple[Storage, Faulty]) -> None:
    import grpc

    from metaas.client import AsyncClient, MetaasError
    from metaas.server.api.admission import Admission
    from metaas.server.api.auth import Authenticator
    from metaas.server.api.query import MetricsQueryServicer
    from metaas.server.api.rpc import Rpcs
    from metaas.server.config import LimitsConfig, SecurityConfig
    from metaas.v1 import query_pb2_grpc

    old, slow = backends
    slow.delay_s = 0.5
    cancelled: list[bool] = []
    original = slow.read_partials

    async def tracking(*args: Any) -> Sequence[Partial]:
        try:
            return await original(*args)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    slow.read_partials = tracking  # type: ignore[method-assign]
    r = router(slow, old, Stage.OFF)  # the slow one is authoritative
    server = grpc.aio.server()
    query_pb2_grpc.add_MetricsQueryServicer_to_server(
        MetricsQueryServicer(
            r.router,
            limits=LimitsConfig(),
            rpcs=Rpcs(noop().tracer, Authenticator(SecurityConfig()), Admission(10, noop().meter)),
        ),
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with AsyncClient(f"127.0.0.1:{port}") as client:
            started = time.perf_counter()
            with pytest.raises(MetaasError) as caught:
                await client.query_range("app", "m", NOW - 60 * MINUTE, NOW, timeout=0.2)
            assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.perf_counter() - started < 0.4
            await asyncio.sleep(0.1)
            assert cancelled == [True]  # the server stopped waiting on storage too
            slow.delay_s = 0.0
            # Healthy afterwards (data is at NOW - 10 min in the fixture's clock).
            result = await client.query_range("app", "m", NOW - 60 * MINUTE, NOW, timeout=5)
            assert result.series
    finally:
        await server.stop(None)


async def test_overload_answers_resource_exhausted_with_retry_info(
    backends: tuple[Storage, Faulty],
) -> None:
    import grpc
    from google.rpc import error_details_pb2, status_pb2

    from metaas.server.api.admission import Admission
    from metaas.server.api.auth import Authenticator
    from metaas.server.api.query import MetricsQueryServicer
    from metaas.server.api.rpc import Rpcs
    from metaas.server.config import LimitsConfig, SecurityConfig
    from metaas.v1 import query_pb2, query_pb2_grpc

    old, slow = backends
    slow.delay_s = 0.3
    server = grpc.aio.server()
    query_pb2_grpc.add_MetricsQueryServicer_to_server(
        MetricsQueryServicer(
            router(slow, old, Stage.OFF).router,
            limits=LimitsConfig(),
            rpcs=Rpcs(noop().tracer, Authenticator(SecurityConfig()), Admission(2, noop().meter)),
        ),
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    request = query_pb2.QueryRangeRequest(
        app="app", metric="m", start_ms=NOW - 3_600_000, end_ms=NOW
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = query_pb2_grpc.MetricsQueryStub(channel)
            results = await asyncio.gather(
                *(stub.QueryRange(request, timeout=5) for _ in range(8)), return_exceptions=True
            )
            refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert len(refused) == 6
            assert {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            details = dict(refused[0].trailing_metadata() or ())["grpc-status-details-bin"]
            (packed,) = status_pb2.Status.FromString(details).details
            retry = error_details_pb2.RetryInfo()
            assert packed.Unpack(retry)
            assert retry.retry_delay.ToMilliseconds() > 0
            assert (await stub.QueryRange(request, timeout=5)).series  # recovers by itself
    finally:
        await server.stop(None)


async def test_a_bucket_holding_the_newest_minutes_is_not_compared(
    backends: tuple[Storage, Faulty],
) -> None:
    """With hour steps, the current hour's bucket holds minutes both sides
    may still be catching up on: a difference there is not a mismatch, one in
    an earlier hour is."""
    old, new = backends
    hour = 60 * MINUTE

    def both(minute: Partial) -> list[Partial]:
        """The minute and the hourly rollup holding it (whole-hour steps read rollups)."""
        start = minute.minute_ms - minute.minute_ms % hour
        rollup = dataclasses.replace(minute, minute_ms=start, resolution=Resolution.HOUR)
        return [minute, rollup]

    assert NOW % hour == 0  # the last bucket, [NOW - 1 h, NOW), ends now
    series = SeriesKey.of("app", "m")
    one = Distribution.from_values(np.array([5.0]))
    # Only on the old side, in the last bucket: it started before the newest
    # minutes but holds them, so it is not compared.
    await old.write_partials(both(Partial(series, NOW - 30 * MINUTE, "w", 1, one)))
    r = router(old, new, Stage.SHADOW, ignore_newest_minutes=2)
    hourly = dataclasses.replace(QUERY, start_ms=NOW - 3 * hour, step_ms=hour)
    routed = await r.query_range(hourly)
    assert routed.comparison is not None
    comparison = await routed.comparison
    assert comparison.consistent, comparison.diff
    await old.write_partials(both(Partial(series, NOW - 90 * MINUTE, "w", 1, one)))
    routed = await r.query_range(hourly)
    assert routed.comparison is not None
    comparison = await routed.comparison
    assert not comparison.consistent
