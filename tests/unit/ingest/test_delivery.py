"""Delivery survives failed steps: a segment that cannot be deleted, a worker
that fails, and still stops promptly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from metaas.server.config import IngestConfig
from metaas.server.ingest.pipeline import IngestPipeline
from metaas.server.storage import Storage
from metaas.server.telemetry import Telemetry
from tests.conformance.conftest import RETENTION_MS, FixedClock
from tests.unit.ingest.test_pipeline import START, stored_count, write

MINUTE = 60_000


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def telemetry(reader: InMemoryMetricReader) -> Iterator[Telemetry]:
    provider = MeterProvider(metric_readers=[reader])
    yield Telemetry(trace.NoOpTracerProvider(), provider)
    provider.shutdown()


def total(reader: InMemoryMetricReader, name: str) -> float:
    data = reader.get_metrics_data()
    if data is None:
        return 0.0
    found = 0.0
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        assert isinstance(point, NumberDataPoint)
                        found += point.value
    return found


async def until(check: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


class Undeletable:
    """Log segments cannot be unlinked while ``on``, as in an append-only
    directory."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.on = True
        self.refused: list[Path] = []
        unlink = Path.unlink

        def refuse(path: Path, missing_ok: bool = False) -> None:
            if self.on and path.suffix == ".wal":
                self.refused.append(path)
                raise PermissionError(1, "Operation not permitted", str(path))
            unlink(path, missing_ok=missing_ok)

        monkeypatch.setattr(Path, "unlink", refuse)


def segments(wal: Path) -> list[Path]:
    return sorted(wal.glob("*.wal"))


@pytest.fixture
async def pipeline(
    tmp_path: Path, storage: Storage, clock: FixedClock, telemetry: Telemetry
) -> AsyncIterator[IngestPipeline]:
    config = IngestConfig(wal_dir=tmp_path / "wal", flush_interval_s=3600, hot_minutes=1)
    p = IngestPipeline(
        config, retention_ms=RETENTION_MS, storage=storage, clock=clock, telemetry=telemetry
    )
    await p.start()
    yield p
    await asyncio.wait_for(p.stop(), 10)


async def test_a_failed_segment_delete_does_not_stop_delivery_of_later_segments(
    tmp_path: Path,
    pipeline: IngestPipeline,
    storage: Storage,
    clock: FixedClock,
    reader: InMemoryMetricReader,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wal = tmp_path / "wal"
    deletes = Undeletable(monkeypatch)
    for flush in range(1, 4):
        await write(pipeline, clock, [START - MINUTE] * 3)
        await asyncio.wait_for(pipeline.flush(), 5)
        assert await stored_count(storage) == 3 * flush
    assert len(deletes.refused) >= 3
    assert len(segments(wal)) == 4  # three stored but undeletable, and the open one
    (problem,) = pipeline.problems()
    assert problem.startswith("wal: 3 stored segments could not be deleted for ")
    assert "PermissionError" in problem
    assert total(reader, "metaas.ingest.cleanup.errors") >= 3
    assert pipeline._wal.backlog_bytes < pipeline._wal.undeleted_bytes  # stored, not lagging

    deletes.on = False  # the cleanup task catches up by itself
    await until(lambda: len(segments(wal)) == 1)
    assert pipeline.problems() == []
    assert pipeline._wal.undeleted_bytes == 0
    await write(pipeline, clock, [START - MINUTE] * 2)
    await asyncio.wait_for(pipeline.flush(), 5)
    assert await stored_count(storage) == 11
    assert len(segments(wal)) == 1


async def test_stop_is_prompt_while_deletes_fail_and_the_next_start_stores_nothing_twice(
    tmp_path: Path,
    storage: Storage,
    clock: FixedClock,
    telemetry: Telemetry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wal = tmp_path / "wal"
    config = IngestConfig(wal_dir=wal, flush_interval_s=3600, hot_minutes=1)
    first = IngestPipeline(
        config, retention_ms=RETENTION_MS, storage=storage, clock=clock, telemetry=telemetry
    )
    await first.start()
    deletes = Undeletable(monkeypatch)
    await write(first, clock, [START - MINUTE] * 4)
    await first.flush()
    await write(first, clock, [START - 5 * MINUTE] * 3)
    began = time.monotonic()
    await asyncio.wait_for(first.stop(), 5)  # flushes; the delete still fails
    assert time.monotonic() - began < 2
    assert await stored_count(storage) == 7
    assert len(segments(wal)) == 3  # two stored but undeleted, and the last one's keys

    deletes.on = False
    second = IngestPipeline(
        config, retention_ms=RETENTION_MS, storage=storage, clock=clock, telemetry=telemetry
    )
    await second.start()
    await second.flush()
    await asyncio.wait_for(second.stop(), 5)  # recovery finishes before the final flush
    assert await stored_count(storage) == 7
    assert [s.name for s in segments(wal)] == [f"{second.generation}-000000000003.wal"]


async def test_a_worker_that_fails_is_restarted_and_reported(
    pipeline: IngestPipeline, storage: Storage, clock: FixedClock, reader: InMemoryMetricReader
) -> None:
    delivery = pipeline._delivery
    store = delivery._store
    failed = asyncio.Event()
    resume = asyncio.Event()

    async def fails_once(target: Any, work: Any) -> None:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("a bug in one step")
        await resume.wait()
        await store(target, work)

    delivery._store = fails_once  # type: ignore[method-assign]
    await write(pipeline, clock, [START - MINUTE] * 3)
    await pipeline.seal()
    await asyncio.wait_for(failed.wait(), 5)
    assert pipeline.problems() == [
        "backend old: delivery worker restarted after RuntimeError: a bug in one step (restarts: 1)"
    ]
    resume.set()
    await asyncio.wait_for(delivery.drain(), 5)
    assert await stored_count(storage) == 3
    assert pipeline.problems() == []
    assert total(reader, "metaas.ingest.task.restarts") == 1
