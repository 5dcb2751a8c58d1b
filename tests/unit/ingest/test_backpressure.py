"""Memory held by aggregates stays bounded whatever the time range of the
writes: it is estimated where it is held (the aggregator, the delivery
queues) and writes are pushed back past the bound until storage catches up."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from metaas.server.config import IngestConfig
from metaas.server.ingest.aggregator import (
    AGGREGATE_OVERHEAD_BYTES,
    Aggregator,
    estimated_bytes,
)
from metaas.server.ingest.pipeline import LONE_ROLE, IngestPipeline, Overloaded
from metaas.server.ingest.records import SeriesBatch
from metaas.server.model import SeriesKey
from metaas.server.sketch import Distribution
from metaas.server.storage import Storage, StorageContext, open_storage
from metaas.server.telemetry import noop
from tests.conformance.conftest import RETENTION_MS, FixedClock
from tests.unit.ingest.test_pipeline import START, Flaky, stored_count, write

MINUTE = 60_000
HOUR = 3_600_000
SERIES = SeriesKey.of("a", "m", {"dyno": "web.1"})
# Encoded sketch: version and zero count, then offset, length, width per store.
_SKETCH_HEADERS = 9 + 2 * 9


def batch(times: list[int], values: list[float] | None = None) -> SeriesBatch:
    return SeriesBatch(
        SERIES,
        np.array(times, np.int64),
        np.array(values if values is not None else [1.0] * len(times), np.float64),
    )


_rng = np.random.default_rng(5)


@pytest.mark.parametrize(
    "values",
    [
        _rng.lognormal(3.0, 1.0, 60),  # latencies
        _rng.lognormal(3.0, 1.0, 5_000),  # counts wider than a byte
        -_rng.lognormal(0.0, 2.0, 100),  # one sign, negative
        10 ** _rng.uniform(-20, 20, 8),  # as wide as a store gets
        10 ** _rng.uniform(-20, 20, 8) * _rng.choice([-1.0, 1.0], 8),  # both signs
        np.array([0.0, 0.0, 3.5, 7.0]),  # zeros beside positives
        np.zeros(10),
        np.array([42.0]),
        np.array([1e-300, 1e289]),  # a ratio that overflows
    ],
    ids=[
        "lognormal",
        "wide-counts",
        "negative",
        "extreme",
        "both-signs",
        "zeros",
        "zero",
        "one",
        "overflow",
    ],
)
def test_estimate_covers_what_the_sketch_holds(values: np.ndarray) -> None:
    distribution = Distribution.from_values(values.astype(np.float64))
    estimate = estimated_bytes(distribution)
    counts = len(distribution.sketch.to_bytes()) - _SKETCH_HEADERS
    # The encoding holds every bucket between the lowest and highest of each
    # sign, no wider than in memory: a lower bound of the counts held.
    assert estimate >= AGGREGATE_OVERHEAD_BYTES + counts
    if values.min() > 0 or values.max() < 0:
        # Known range: close to the truth, not a blanket worst case.
        width = 1 if values.size < 256 else 2
        assert estimate <= AGGREGATE_OVERHEAD_BYTES + width * (counts + 3)


def test_held_bytes_follow_the_states_in_and_out() -> None:
    aggregator = Aggregator(hot_minutes=3)
    backfill = [START - 10 * HOUR + m * MINUTE + s * 1000 for m in range(120) for s in range(5)]
    aggregator.apply([batch(backfill)])
    assert len(aggregator) == 120 + 2  # minutes and their two hours
    held = aggregator.held_bytes
    assert held >= len(aggregator) * AGGREGATE_OVERHEAD_BYTES
    pending = aggregator.take_dirty()
    assert sum(p.nbytes for p in pending) == held
    assert aggregator.held_bytes == held  # never evicted yet: copied, kept
    aggregator.evict(START)
    assert (len(aggregator), aggregator.held_bytes) == (0, 0)


def test_states_older_than_the_hot_window_move_out_instead_of_being_copied() -> None:
    aggregator = Aggregator(hot_minutes=3)
    aggregator.evict(START)  # the hot window starts 3 minutes before START
    aggregator.apply([batch([START - 2 * HOUR + m * MINUTE for m in range(30)] + [START])])
    current = {(START, MINUTE), (START - START % HOUR, HOUR)}
    pending = aggregator.take_dirty()
    assert {(p.minute_ms, p.resolution) for p in pending if p.complete} >= current
    # Only the hot minute and hour stay; the backfill is held once, by the flush.
    assert len(aggregator) == 2
    assert aggregator.held_bytes == sum(
        p.nbytes for p in pending if (p.minute_ms, p.resolution) in current
    )
    aggregator.apply([batch([START - 2 * HOUR + 10])])  # late: a delta now
    late = aggregator.take_dirty()
    assert {p.complete for p in late} == {False}
    assert len(aggregator) == 2


def test_take_dirty_counts_what_merges_added() -> None:
    aggregator = Aggregator(hot_minutes=3)
    rng = np.random.default_rng(1)
    aggregator.apply([batch([START] * 10, rng.lognormal(3.0, 0.1, 10).tolist())])
    before = aggregator.held_bytes
    aggregator.apply([batch([START] * 300, rng.lognormal(3.0, 2.0, 300).tolist())])
    pending = aggregator.take_dirty()
    assert aggregator.held_bytes == sum(p.nbytes for p in pending) > before
    assert aggregator.held_bytes == sum(estimated_bytes(p.distribution) for p in pending)


def pipeline(
    wal: Path,
    storage: Storage,
    clock: FixedClock,
    max_aggregate_bytes: int = IngestConfig().max_aggregate_bytes,
    **targets: Storage,
) -> IngestPipeline:
    config = IngestConfig(
        wal_dir=wal, flush_interval_s=3600, hot_minutes=1, max_aggregate_bytes=max_aggregate_bytes
    )
    names = tuple(targets) or (LONE_ROLE,)
    return IngestPipeline(
        config,
        retention_ms=RETENTION_MS,
        storage=targets or storage,
        clock=clock,
        telemetry=noop(),
        routing=lambda _app: names,
    )


async def test_a_backfill_is_pushed_back_while_storage_is_behind_then_admitted(
    tmp_path: Path, storage: Storage, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 100 * AGGREGATE_OVERHEAD_BYTES
    down = Flaky(storage, "sqlite")
    p = pipeline(tmp_path / "wal", down, clock, limit)  # type: ignore[arg-type]
    await p.start()
    accepted = 0
    refusal: Overloaded | None = None
    for hour in range(1, 48):  # a day back, ten minutes per write, sealed after each
        first = START - hour * HOUR
        try:
            accepted += await write(p, clock, [first + m * MINUTE for m in range(10)])
        except Overloaded as error:
            refusal = error
            break
        await p.seal()
    assert refusal is not None, "never pushed back"
    assert refusal.retry_after_s == 3600  # the flush interval
    assert "storage is behind" in str(refusal)
    assert 0 < accepted < 47 * 10
    # At most one write past the bound: what was admitted before it was reached.
    one_write = 12 * (AGGREGATE_OVERHEAD_BYTES + 8)
    held = p._aggregator.held_bytes + p._delivery.held_bytes
    assert limit < held <= limit + one_write

    down.down = False
    await p.flush()
    assert p._delivery.held_bytes == 0
    assert await write(p, clock, [START - 50 * HOUR]) == 1  # admitted again by itself
    await p.stop()
    assert await stored_count(storage) == accepted + 1


async def test_a_partial_queued_for_two_targets_is_held_once_until_both_store_it(
    tmp_path: Path, storage: Storage, clock: FixedClock
) -> None:
    second = await open_storage(
        f"sqlite:///{tmp_path / 'new.sqlite'}", StorageContext(RETENTION_MS, clock=clock)
    )
    old, new = Flaky(storage, "old"), Flaky(second, "new")
    p = pipeline(tmp_path / "wal", storage, clock, old=old, new=new)  # type: ignore[arg-type]
    await p.start()
    await write(p, clock, [START - 2 * HOUR] * 3)
    await p.seal()
    minute = estimated_bytes(Distribution.from_values(np.ones(3)))
    assert p._delivery.held_bytes == 2 * minute  # the minute and its hour, not four
    new.down = False
    deadline = time.monotonic() + 5
    while p.write_lag_s()["new"] > 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert p._delivery.held_bytes == 2 * minute  # the old target's queue still holds them
    old.down = False
    await p.flush()
    assert p._delivery.held_bytes == 0
    await p.stop()
    await second.close()
