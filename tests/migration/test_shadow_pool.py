"""Shadow checks in worker processes: verdicts, shedding under load, and a
worker that dies (real processes, real SQLite files)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from metaas.server.config import CodecConfig
from metaas.server.migration.shadow_pool import (
    MAX_QUEUED,
    MAX_TASK_VALUES,
    CheckTask,
    ShadowPool,
    setup_of,
)
from metaas.server.migration.stages import Role
from metaas.server.model import Partial, SeriesKey
from metaas.server.query import QueryEngine, RangeQuery, parse_stat
from metaas.server.sketch import Distribution
from metaas.server.storage import StorageContext, open_storage

MINUTE = 60_000
RETENTION_MS = 30 * 86_400_000
STATS = tuple(s for s in (parse_stat("count"), parse_stat("p99")) if s is not None)


def _now() -> int:
    return time.time_ns() // 1_000_000 // MINUTE * MINUTE


async def _fill(url: str, minutes: list[int], extra: float | None = None) -> None:
    storage = await open_storage(url, StorageContext(RETENTION_MS))
    rng = np.random.default_rng(1)
    series = SeriesKey.of("shop", "latency", {"dyno": "web.1"})
    partials = [
        Partial(series, m, "w1", 1, Distribution.from_values(rng.lognormal(3, 1, 50)))
        for m in minutes
    ]
    if extra is not None:
        partials[-1].distribution.merge(Distribution.from_values(np.array([extra])))
    await storage.write_partials(partials)
    await storage.close()


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[tuple[ShadowPool, RangeQuery, tuple[object, ...]]]:
    old, new = f"sqlite:///{tmp_path / 'old.db'}", f"sqlite:///{tmp_path / 'new.db'}"
    start = _now() - 30 * MINUTE
    minutes = [start + i * MINUTE for i in range(10)]
    await _fill(old, minutes)
    await _fill(new, minutes, extra=1e6)  # the last minute differs
    query = RangeQuery("shop", "latency", (), start, start + 30 * MINUTE, MINUTE, STATS, ())
    reader = await open_storage(old, StorageContext(RETENTION_MS))
    engine = QueryEngine(retention_ms=RETENTION_MS, clock=StorageContext(RETENTION_MS).clock)
    served = tuple(await engine.query_range(reader, query))
    await reader.close()
    shadow = ShadowPool(
        setup_of({Role.OLD: old, Role.NEW: new}, retention_ms=RETENTION_MS, codec=CodecConfig()),
        workers=1,
    )
    await shadow.start()
    try:
        yield shadow, query, served
    finally:
        await shadow.close()


def _task(
    role: Role, query: RangeQuery, served: tuple[object, ...], *, start_within_s: float = 30.0
) -> CheckTask:
    return CheckTask(
        role.value,
        query,
        served,  # type: ignore[arg-type]
        ("count", "p99"),
        1e-9,
        _now() + 2 * MINUTE,
        5.0,
        time.time() + start_within_s,
    )


async def test_the_worker_reads_the_shadow_and_compares(pool) -> None:  # type: ignore[no-untyped-def]
    shadow, query, served = pool
    same = await shadow.check(_task(Role.OLD, query, served))
    assert same is not None
    assert (same.error, same.diff) == (None, ())
    assert same.duration_s > 0
    other = await shadow.check(_task(Role.NEW, query, served))
    assert other is not None
    assert other.error is None
    assert len(other.diff) == 1
    assert "count: primary=50 shadow=51" in other.diff[0]


async def test_checks_beyond_the_queue_bound_are_shed(pool) -> None:  # type: ignore[no-untyped-def]
    shadow, query, served = pool
    verdicts = await asyncio.gather(
        *(shadow.check(_task(Role.OLD, query, served)) for _ in range(MAX_QUEUED + 5))
    )
    assert verdicts.count(None) == 5
    assert all(v is not None and not v.diff for v in verdicts[:MAX_QUEUED])
    # Once the queue drained, checks are taken again.
    assert await shadow.check(_task(Role.OLD, query, served)) is not None


async def test_a_dead_worker_means_skipped_checks_until_it_is_replaced(pool) -> None:  # type: ignore[no-untyped-def]
    shadow, query, served = pool
    (worker,) = shadow._workers
    worker.process.kill()
    worker.process.join()
    await asyncio.sleep(0.2)  # the server notices the closed socket
    assert await shadow.check(_task(Role.OLD, query, served)) is None
    # A new worker takes its place (after a second), and checks resume.
    deadline = time.monotonic() + 60
    while shadow._workers[0] is worker or not shadow._workers[0].alive:
        assert time.monotonic() < deadline, "no new worker"
        await asyncio.sleep(0.2)
    verdict = await shadow.check(_task(Role.OLD, query, served))
    assert verdict is not None
    assert verdict.diff == ()


async def test_a_task_that_waited_past_its_deadline_is_skipped(pool) -> None:  # type: ignore[no-untyped-def]
    shadow, query, served = pool
    assert await shadow.check(_task(Role.OLD, query, served, start_within_s=-1.0)) is None
    assert await shadow.check(_task(Role.OLD, query, served)) is not None


async def test_a_huge_answer_is_skipped_and_a_large_one_checked(pool) -> None:  # type: ignore[no-untyped-def]
    shadow, query, served = pool
    group = served[0]

    def copies(count: int) -> tuple[object, ...]:
        return tuple(
            dataclasses.replace(
                group,
                labels=(("dyno", f"web.{i}"),),
                values=tuple(tuple(v + i for v in column) for column in group.values),
            )
            for i in range(count)
        )

    started = time.perf_counter()
    assert MAX_TASK_VALUES < 30 * 10_000
    assert await shadow.check(_task(Role.OLD, query, copies(10_000))) is None
    assert time.perf_counter() - started < 1.0  # not pickled, not sent
    # Below the bound, a large answer (about 1 MB) is sent and checked.
    verdict = await shadow.check(_task(Role.OLD, query, copies(3_000)))
    assert verdict is not None
    assert verdict.error is None
    assert verdict.diff  # the shadow has one series, the answer 3,000
