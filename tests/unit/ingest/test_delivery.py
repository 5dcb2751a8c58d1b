"""Delivery survives failed steps: a segment that cannot be deleted, a worker
that fails, and still stops promptly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from metaas.server.config import IngestConfig
from metaas.server.ingest.aggregator import Aggregator, PendingPartial
from metaas.server.ingest.delivery import Delivery
from metaas.server.ingest.pipeline import IngestPipeline
from metaas.server.ingest.records import SeriesBatch
from metaas.server.ingest.wal import Segment, SegmentId
from metaas.server.model import Partial, SeriesKey
from metaas.server.storage import Storage, StorageContext, Unavailable, open_storage
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


KAFKA = "kafka/observations/"


def deltas(count: int, value: float = 1.0) -> list[PendingPartial]:
    """A flush's deltas: ``count`` samples in one minute (a minute and its hour)."""
    aggregator = Aggregator(hot_minutes=1, all_incomplete=True)
    times = np.full(count, START - MINUTE, np.int64)
    aggregator.apply([SeriesBatch(SeriesKey.of("a", "m"), times, np.full(count, value))])
    return aggregator.take_dirty()


class Watched:
    """A storage that records each write attempt's writers, refuses writes
    while ``down``, and holds them while ``gate`` is closed."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.down = False
        self.gate = asyncio.Event()
        self.gate.set()
        self.attempts: list[str] = []

    async def write_partials(self, partials: Sequence[Partial]) -> None:
        self.attempts.append(partials[0].writer)
        await self.gate.wait()
        if self.down:
            raise Unavailable("backend is down", backend="sqlite")
        await self.inner.write_partials(partials)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)


@pytest.fixture
async def watched(storage: Storage) -> Watched:
    return Watched(storage)


@pytest.fixture
def completed() -> list[SegmentId]:
    return []


@pytest.fixture
async def delivery(
    watched: Watched, completed: list[SegmentId], telemetry: Telemetry
) -> AsyncIterator[Delivery]:
    async def on_complete(segment: SegmentId) -> None:
        completed.append(segment)

    d = Delivery({"old": watched}, on_complete=on_complete, telemetry=telemetry)
    d.start()
    yield d
    await asyncio.wait_for(d.stop(), 5)


async def rows_by_writer(storage: Storage) -> dict[tuple[str, int], int]:
    """Samples stored per (writer, epoch), from the minutes."""
    found: dict[tuple[str, int], int] = {}
    for row in await storage.read_partials("a", "m", 0, START + MINUTE):
        key = (row.writer, row.epoch)
        found[key] = found.get(key, 0) + row.distribution.count
    return found


async def test_withdraw_drops_the_queued_work_of_its_writer_only(
    delivery: Delivery, watched: Watched, storage: Storage, completed: list[SegmentId]
) -> None:
    watched.down = True
    flushes = {
        (f"{KAFKA}0", 5): deltas(2),
        (f"{KAFKA}1", 5): deltas(3),
        ("0123456789abcdef", 2): deltas(4),  # a log segment of this server
        (f"{KAFKA}0", 9): deltas(5),
    }
    for segment, pending in flushes.items():
        await delivery.submit(segment, {"old": pending})
    held = {segment: sum(p.nbytes for p in pending) for segment, pending in flushes.items()}
    assert delivery.held_bytes == sum(held.values())
    await until(lambda: watched.attempts != [])  # the first flush fails, and is retried

    assert delivery.withdraw(f"{KAFKA}0") == 2
    attempted = len(watched.attempts)
    assert delivery.held_bytes == held[(f"{KAFKA}1", 5)] + held[("0123456789abcdef", 2)]
    watched.down = False
    await asyncio.wait_for(delivery.drain(), 5)
    assert completed == [(f"{KAFKA}1", 5), ("0123456789abcdef", 2)]
    assert await rows_by_writer(storage) == {(f"{KAFKA}1", 5): 3, ("0123456789abcdef", 2): 4}
    # The flush failing when withdrawn was given up before its next attempt.
    assert f"{KAFKA}0" not in watched.attempts[attempted:]
    assert delivery.held_bytes == 0
    assert delivery.problems() == []


async def test_work_withdrawn_during_an_attempt_is_not_reported_stored(
    delivery: Delivery, watched: Watched, storage: Storage, completed: list[SegmentId]
) -> None:
    """An attempt under way is not cut short; its rows are those any replay
    would write (the same epoch), and nobody is told it was stored."""
    watched.gate.clear()
    await delivery.submit((f"{KAFKA}0", 5), {"old": deltas(2)})
    await delivery.submit((f"{KAFKA}1", 5), {"old": deltas(3)})
    await until(lambda: watched.attempts == [f"{KAFKA}0"])

    assert delivery.withdraw(f"{KAFKA}0") == 1
    assert delivery.held_bytes == sum(p.nbytes for p in deltas(3))
    watched.gate.set()
    await asyncio.wait_for(delivery.drain(), 5)
    assert completed == [(f"{KAFKA}1", 5)]
    assert watched.attempts == [f"{KAFKA}0", f"{KAFKA}1"]
    assert delivery.held_bytes == 0


async def test_a_withdrawn_flush_stored_on_one_target_is_dropped_from_the_other(
    watched: Watched, tmp_path: Path, clock: FixedClock, telemetry: Telemetry
) -> None:
    second = await open_storage(
        f"sqlite:///{tmp_path / 'new.sqlite'}", StorageContext(RETENTION_MS, clock=clock)
    )
    new = Watched(second)
    new.down = True
    completed: list[SegmentId] = []

    async def on_complete(segment: SegmentId) -> None:
        completed.append(segment)

    delivery = Delivery({"old": watched, "new": new}, on_complete=on_complete, telemetry=telemetry)
    delivery.start()
    pending = deltas(2)
    await delivery.submit((f"{KAFKA}0", 5), {"old": pending, "new": pending})
    await until(lambda: watched.attempts == [f"{KAFKA}0"] and new.attempts != [])
    await asyncio.sleep(0.05)  # stored on old, failing on new
    assert delivery.held_bytes == sum(p.nbytes for p in pending)  # shared, counted once

    assert delivery.withdraw(f"{KAFKA}0") == 1
    assert delivery.held_bytes == 0
    new.down = False
    await asyncio.wait_for(delivery.drain(), 5)
    assert completed == []
    assert await rows_by_writer(second) == {}
    await asyncio.wait_for(delivery.stop(), 5)
    await second.close()


async def test_a_delivered_flush_of_an_attached_writer_is_reported_and_deletes_no_segment(
    tmp_path: Path, pipeline: IngestPipeline, storage: Storage, clock: FixedClock
) -> None:
    stored: list[tuple[str, int]] = []
    pipeline.attach("kafka/", lambda writer, epoch: stored.append((writer, epoch)))
    wal = pipeline._wal
    deleted: list[Segment] = []
    delete = wal.delete

    async def watch_delete(segment: Segment) -> None:
        deleted.append(segment)
        await delete(segment)

    wal.delete = watch_delete  # type: ignore[method-assign]
    await pipeline.deliver(f"{KAFKA}3", 7, deltas(4, value=2.0))
    await asyncio.wait_for(pipeline.drain(), 5)
    assert stored == [(f"{KAFKA}3", 7)]
    assert deleted == []
    assert await rows_by_writer(storage) == {(f"{KAFKA}3", 7): 4}
    assert pipeline.delivery_held_bytes == 0

    # The server's own flushes still delete their segment, and are not reported.
    await write(pipeline, clock, [START - MINUTE] * 3)
    await asyncio.wait_for(pipeline.flush(), 5)
    assert stored == [(f"{KAFKA}3", 7)]
    assert [s.generation for s in deleted] == [pipeline.generation]
    assert len(segments(tmp_path / "wal")) == 1
    assert await stored_count(storage) == 7
