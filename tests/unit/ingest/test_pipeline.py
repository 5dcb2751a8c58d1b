"""The ingest pipeline in process: flush, eviction, crash recovery."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from metaas.server.api.intake import write_batch
from metaas.server.api.validation import validate_write
from metaas.server.config import IngestConfig, LimitsConfig
from metaas.server.ingest.pipeline import IngestPipeline
from metaas.server.model import Partial, Resolution
from metaas.server.sketch import Distribution
from metaas.server.storage import Storage, StorageContext, Unavailable, open_storage
from metaas.server.telemetry import noop
from metaas.v1 import ingest_pb2
from tests.conformance.conftest import RETENTION_MS, FixedClock
from tests.unit.conftest import START

MINUTE = 60_000


def pipeline(wal: Path, storage: Storage, clock: FixedClock) -> IngestPipeline:
    config = IngestConfig(wal_dir=wal, flush_interval_s=3600, hot_minutes=1)
    return IngestPipeline(
        config, retention_ms=RETENTION_MS, storage=storage, clock=clock, telemetry=noop()
    )


async def write(
    p: IngestPipeline, clock: FixedClock, times: list[int], key: str = "", caller: str = "router-7"
) -> int:
    request = ingest_pb2.WriteRequest(
        idempotency_key=key,
        series=[
            ingest_pb2.SeriesSamples(app="a", metric="m", times_ms=times, values=[1.0] * len(times))
        ],
    )
    batches, accepted = validate_write(
        request, now_ms=clock.now_ms(), retention_ms=RETENTION_MS, limits=LimitsConfig()
    )
    return await p.write(write_batch(request, batches, accepted), caller=caller)


async def stored_count(storage: Storage) -> int:
    """Samples stored, after checking that each writer's hourly rollups hold
    exactly what its minutes hold."""
    end = START + 3600 * 1000
    minutes = await storage.read_partials("a", "m", 0, end)
    hours = await storage.read_partials("a", "m", 0, end, Resolution.HOUR)
    by_minutes: dict[tuple[str, int], Distribution] = {}
    for minute in minutes:
        key = (minute.writer, Resolution.HOUR.floor(minute.minute_ms))
        if key in by_minutes:
            by_minutes[key].merge(minute.distribution)
        else:
            by_minutes[key] = minute.distribution.copy()
    by_hours = {(h.writer, h.minute_ms): h.distribution for h in hours}
    assert by_hours.keys() == by_minutes.keys()
    for key, rollup in by_hours.items():
        expected = by_minutes[key]
        assert (rollup.count, rollup.min, rollup.max) == (
            expected.count,
            expected.min,
            expected.max,
        )
        assert rollup.sketch.to_bytes() == expected.sketch.to_bytes()
    return sum(p.distribution.count for p in minutes)


async def crash(p: IngestPipeline) -> None:
    """Stop without the final flush, as kill -9 would."""
    assert p._task is not None
    p._task.cancel()
    await asyncio.gather(p._task, return_exceptions=True)
    await p._delivery.stop()
    await p._wal.close()


async def test_late_samples_after_eviction_merge_into_stored_row(
    tmp_path: Path, storage: Storage, clock: FixedClock
) -> None:
    p = pipeline(tmp_path / "wal", storage, clock)
    await p.start()
    await write(p, clock, [START - 2 * MINUTE] * 3)
    await p.flush()
    clock.now += 5 * MINUTE
    await p.flush()  # the minute leaves memory
    assert len(p._aggregator) == 0
    await write(p, clock, [START - 2 * MINUTE + 10] * 2)
    await p.flush()
    await write(p, clock, [START - 2 * MINUTE + 20] * 4)
    await p.flush()
    assert await stored_count(storage) == 9
    partials = await storage.read_partials("a", "m", 0, START + MINUTE)
    assert len(partials) == 1  # one row per writer and minute
    await p.stop()


async def test_replaying_a_segment_already_stored_applies_it_once(
    tmp_path: Path, storage: Storage, clock: FixedClock
) -> None:
    wal = tmp_path / "wal"
    first = pipeline(wal, storage, clock)
    await first.start()
    await write(first, clock, [START - MINUTE] * 5, key="k1")
    await write(first, clock, [START - 10 * MINUTE] * 2, key="k2")
    saved = tmp_path / "saved"
    shutil.copytree(wal, saved)  # the log as it was before the flush deleted it
    await first.flush()
    await crash(first)
    assert await stored_count(storage) == 7

    shutil.rmtree(wal)
    shutil.copytree(saved, wal)  # as if the crash came between storing and deleting
    second = pipeline(wal, storage, clock)
    await second.start()
    await second.flush()
    await asyncio.sleep(0.1)  # recovery runs first in the flush task
    assert await stored_count(storage) == 7
    # Keys of the earlier run are remembered: retries are answered, not applied.
    assert await write(second, clock, [START - MINUTE] * 5, key="k1") == 5
    await second.stop()
    assert await stored_count(storage) == 7


async def test_recovery_stores_unflushed_log_under_the_old_writer(
    tmp_path: Path, storage: Storage, clock: FixedClock
) -> None:
    wal = tmp_path / "wal"
    first = pipeline(wal, storage, clock)
    await first.start()
    await write(first, clock, [START - MINUTE] * 5)
    await first.flush()
    await write(first, clock, [START - MINUTE] * 3)  # acknowledged, never flushed
    await crash(first)

    second = pipeline(wal, storage, clock)
    await second.start()
    await write(second, clock, [START - MINUTE] * 2)
    await second.stop()
    partials = await storage.read_partials("a", "m", 0, START)
    assert sorted((p.writer, p.distribution.count) for p in partials) == sorted(
        [(first.generation, 8), (second.generation, 2)]
    )
    segments = list(wal.glob("*.wal"))  # the directory also holds its LOCK file
    assert segments != []
    assert all(second.generation in s.name for s in segments), segments


async def test_retry_of_a_cancelled_write_is_applied_once(
    tmp_path: Path, storage: Storage, clock: FixedClock
) -> None:
    p = pipeline(tmp_path / "wal", storage, clock)
    await p.start()
    first = asyncio.create_task(write(p, clock, [START - MINUTE] * 5, key="k"))
    await asyncio.sleep(0)  # appended, waiting for the disk
    first.cancel()  # the client's deadline expired
    assert await write(p, clock, [START - MINUTE] * 5, key="k") == 5
    await p.stop()
    assert await stored_count(storage) == 5


async def test_flush_loop_survives_a_failing_disk(
    tmp_path: Path, storage: Storage, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = IngestConfig(wal_dir=tmp_path / "wal", flush_interval_s=0.05)
    p = IngestPipeline(
        config, retention_ms=RETENTION_MS, storage=storage, clock=clock, telemetry=noop()
    )
    await p.start()
    await write(p, clock, [START - MINUTE] * 3)
    real = p._wal._start_segment
    failures = []

    def full_disk(epoch: int, head: bytes) -> None:
        if len(failures) < 3:
            failures.append(epoch)
            raise OSError(28, "No space left on device")
        real(epoch, head)

    monkeypatch.setattr(p._wal, "_start_segment", full_disk)
    for _ in range(100):
        if await stored_count(storage) == 3:
            break
        await asyncio.sleep(0.05)
    assert failures == [2, 2, 2]  # the same rotation retried, no stray segment left
    assert await stored_count(storage) == 3
    await write(p, clock, [START - MINUTE] * 2)
    await p.stop()
    assert await stored_count(storage) == 5


class Flaky:
    """A storage that refuses writes while ``down``."""

    def __init__(self, inner: Storage, name: str) -> None:
        self.inner = inner
        self.down = True
        self.name = name

    async def write_partials(self, partials: Sequence[Partial]) -> None:
        if self.down:
            raise Unavailable("backend is down", backend=self.name)
        await self.inner.write_partials(partials)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)


async def test_dual_writes_converge_after_an_outage_of_one_target(
    tmp_path: Path, storage: Storage, clock: FixedClock
) -> None:
    second = await open_storage(
        f"sqlite:///{tmp_path / 'new.sqlite'}", StorageContext(RETENTION_MS, clock=clock)
    )
    new = Flaky(second, "new")
    config = IngestConfig(wal_dir=tmp_path / "wal", flush_interval_s=0.05)
    p = IngestPipeline(
        config,
        retention_ms=RETENTION_MS,
        storage={"old": storage, "new": new},  # type: ignore[dict-item]
        clock=clock,
        telemetry=noop(),
        routing=lambda app: ("old", "new"),
    )
    await p.start()
    for _ in range(5):
        await write(p, clock, [START - MINUTE] * 2)
        await asyncio.sleep(0.06)
    await p.seal()
    await asyncio.sleep(0.2)
    assert await stored_count(storage) == 10  # the healthy target is not held back
    assert await stored_count(second) == 0
    assert p.write_lag_s()["new"] > 0
    assert len(list((tmp_path / "wal").glob("*.wal"))) > 1  # kept for the failing target
    new.down = False
    await p.flush()
    assert await stored_count(second) == 10
    assert p.write_lag_s() == {"old": 0.0, "new": 0.0}
    await p.stop()
    assert len(list((tmp_path / "wal").glob("*.wal"))) == 1
    await second.close()


async def test_backlog_bound_refuses_writes_until_storage_catches_up(
    tmp_path: Path, storage: Storage, clock: FixedClock
) -> None:
    from metaas.server.ingest.pipeline import Overloaded

    down = Flaky(storage, "sqlite")
    config = IngestConfig(wal_dir=tmp_path / "wal", flush_interval_s=0.05, max_backlog_bytes=4000)
    p = IngestPipeline(
        config,
        retention_ms=RETENTION_MS,
        storage=down,  # type: ignore[arg-type]
        clock=clock,
        telemetry=noop(),
    )
    await p.start()
    accepted = 0
    refusal: Overloaded | None = None
    for _ in range(200):
        try:
            accepted += await write(p, clock, [START - MINUTE] * 20)
        except Overloaded as error:
            refusal = error
            break
        await asyncio.sleep(0.01)
    assert refusal is not None
    assert refusal.retry_after_s > 0
    assert 0 < accepted < 200 * 20
    down.down = False
    await p.flush()
    assert await write(p, clock, [START - MINUTE] * 20) == 20  # recovered by itself
    await p.stop()
    assert await stored_count(storage) == accepted + 20
