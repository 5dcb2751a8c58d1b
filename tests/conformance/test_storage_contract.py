"""The storage contract every backend must keep (see storage/base.py)."""

from __future__ import annotations

import dataclasses

import numpy as np

from metaas.server.model import Partial, PartialKey, Resolution, SeriesKey
from metaas.server.sketch import Distribution
from metaas.server.storage import Storage
from tests.conformance.conftest import RETENTION_MS, FixedClock

MINUTE = 60_000


def dist(*values: float) -> Distribution:
    return Distribution.from_values(np.array(values, dtype=np.float64))


def partial(
    minute: int,
    *values: float,
    labels: dict[str, str] | None = None,
    writer: str = "w1",
    epoch: int = 1,
    app: str = "shop",
    metric: str = "latency",
) -> Partial:
    labels = {"dyno": "web.1"} if labels is None else labels
    return Partial(SeriesKey.of(app, metric, labels), minute, writer, epoch, dist(*values))


def as_set(partials: object) -> set[tuple[object, ...]]:
    return {
        (p.series, p.minute_ms, p.writer, p.epoch, p.distribution.to_bytes())  # type: ignore[attr-defined]
        for p in partials  # type: ignore[attr-defined]
    }


async def test_round_trip_keeps_every_field(storage: Storage, clock: FixedClock) -> None:
    base = clock.now - 10 * MINUTE
    written = [
        partial(base, 1.0, 2.0, 3.5),
        partial(base + MINUTE, -4.0, 0.0, 1e-300, 7e300, labels={"dyno": "web.2", "s": "2xx"}),
        partial(base, 5.0, writer="w2", epoch=7),
        partial(base, 9.0, labels={}),
    ]
    await storage.write_partials(written)
    read = await storage.read_partials("shop", "latency", base, base + 2 * MINUTE)
    assert as_set(read) == as_set(written)


async def test_upsert_is_idempotent_and_replaces(storage: Storage, clock: FixedClock) -> None:
    base = clock.now - 5 * MINUTE
    await storage.write_partials([partial(base, 1.0)])
    await storage.write_partials([partial(base, 1.0)])
    await storage.write_partials([partial(base, 1.0, 2.0, epoch=2)])
    read = await storage.read_partials("shop", "latency", base, base + MINUTE)
    assert len(read) == 1
    assert read[0].epoch == 2
    assert read[0].distribution.count == 2


async def test_range_is_start_inclusive_end_exclusive(storage: Storage, clock: FixedClock) -> None:
    base = clock.now - 10 * MINUTE
    await storage.write_partials([partial(base + i * MINUTE, float(i)) for i in range(5)])
    read = await storage.read_partials("shop", "latency", base + MINUTE, base + 3 * MINUTE)
    assert sorted(p.minute_ms for p in read) == [base + MINUTE, base + 2 * MINUTE]


async def test_reads_are_scoped_to_app_and_metric(storage: Storage, clock: FixedClock) -> None:
    base = clock.now - 10 * MINUTE
    await storage.write_partials(
        [
            partial(base, 1.0),
            partial(base, 2.0, app="other"),
            partial(base, 3.0, metric="memory"),
        ]
    )
    read = await storage.read_partials("shop", "latency", base, base + MINUTE)
    assert [p.distribution.sum for p in read] == [1.0]
    assert await storage.read_partials("nobody", "latency", base, base + MINUTE) == []


async def test_get_partials_returns_only_stored_keys(storage: Storage, clock: FixedClock) -> None:
    base = clock.now - 10 * MINUTE
    stored = partial(base, 1.0, 2.0, epoch=3)
    await storage.write_partials([stored])
    missing = PartialKey(stored.series, base, "w9")
    found = await storage.get_partials([stored.key, missing])
    assert set(found) == {stored.key}
    assert found[stored.key].epoch == 3
    assert found[stored.key].distribution == stored.distribution
    assert await storage.get_partials([]) == {}


async def test_list_series_is_distinct_and_filtered(storage: Storage, clock: FixedClock) -> None:
    base = clock.now - 10 * MINUTE
    await storage.write_partials(
        [
            partial(base, 1.0),
            partial(base + MINUTE, 1.0),
            partial(base, 1.0, writer="w2"),
            partial(base, 1.0, labels={"dyno": "web.2"}),
            partial(base, 1.0, metric="memory"),
            partial(base - 60 * MINUTE, 1.0, metric="old"),
            partial(base, 1.0, app="other"),
        ]
    )
    listed = await storage.list_series("shop", base, base + 2 * MINUTE)
    assert sorted((s.metric, s.labels) for s in listed) == [
        ("latency", (("dyno", "web.1"),)),
        ("latency", (("dyno", "web.2"),)),
        ("memory", (("dyno", "web.1"),)),
    ]
    only = await storage.list_series("shop", base, base + 2 * MINUTE, metric="memory")
    assert [s.metric for s in only] == ["memory"]


async def test_expired_data_is_never_returned(storage: Storage, clock: FixedClock) -> None:
    old = clock.now - RETENTION_MS - 2 * MINUTE
    fresh = clock.now - 10 * MINUTE
    await storage.write_partials([partial(old, 1.0), partial(fresh, 2.0)])
    read = await storage.read_partials("shop", "latency", 0, clock.now)
    assert [p.minute_ms for p in read] == [fresh]
    assert await storage.get_partials([partial(old, 1.0).key]) == {}
    assert [s.metric for s in await storage.list_series("shop", 0, clock.now)] == ["latency"]
    # Time passes: what was fresh expires too.
    clock.now += RETENTION_MS
    assert await storage.read_partials("shop", "latency", 0, clock.now) == []


async def test_unicode_labels_and_many_partials(storage: Storage, clock: FixedClock) -> None:
    base = clock.now - 100 * MINUTE
    labels = {"route": "/café/ünïcode", "quote": 'say "hi"'}
    written = [
        partial(base + (i % 90) * MINUTE, float(i), labels={**labels, "n": str(i // 90)})
        for i in range(1200)
    ]
    for start in range(0, len(written), 500):
        await storage.write_partials(written[start : start + 500])
    read = await storage.read_partials("shop", "latency", base, base + 90 * MINUTE)
    assert as_set(read) == as_set(written)


HOUR = 60 * MINUTE


def hourly(hour: int, *values: float, writer: str = "w1", epoch: int = 1) -> Partial:
    return dataclasses.replace(
        partial(hour, *values, writer=writer, epoch=epoch), resolution=Resolution.HOUR
    )


async def test_hourly_rollups_are_stored_apart_from_minutes(
    storage: Storage, clock: FixedClock
) -> None:
    hour = Resolution.HOUR.floor(clock.now) - 3 * HOUR
    minutes = [partial(hour + i * MINUTE, float(i)) for i in range(3)]
    rollups = [
        hourly(hour, 0.0, 1.0, 2.0),
        hourly(hour + HOUR, 5.0),
        hourly(hour, 7.0, writer="w2"),
    ]
    await storage.write_partials([*minutes, *rollups])

    read_minutes = await storage.read_partials("shop", "latency", hour, hour + 2 * HOUR)
    read_hours = await storage.read_partials(
        "shop", "latency", hour, hour + 2 * HOUR, Resolution.HOUR
    )
    assert as_set(read_minutes) == as_set(minutes)
    assert all(p.resolution is Resolution.MINUTE for p in read_minutes)
    assert as_set(read_hours) == as_set(rollups)
    assert all(p.resolution is Resolution.HOUR for p in read_hours)
    # An hour starts in the range or is left out, like a minute.
    later = await storage.read_partials(
        "shop", "latency", hour + MINUTE, hour + 2 * HOUR, Resolution.HOUR
    )
    assert [p.minute_ms for p in later] == [hour + HOUR]
    # Rollups never make a series appear in a range its minutes are not in.
    assert await storage.list_series("shop", hour + HOUR, hour + 2 * HOUR) == []


async def test_hourly_keys_are_their_own(storage: Storage, clock: FixedClock) -> None:
    hour = Resolution.HOUR.floor(clock.now) - 2 * HOUR
    minute, rollup = partial(hour, 1.0), hourly(hour, 1.0, 2.0, epoch=3)
    await storage.write_partials([minute, rollup])
    found = await storage.get_partials([minute.key, rollup.key])
    assert found[minute.key].distribution.count == 1
    assert found[minute.key].resolution is Resolution.MINUTE
    assert found[rollup.key].distribution.count == 2
    assert found[rollup.key].epoch == 3
    assert found[rollup.key].resolution is Resolution.HOUR
    await storage.write_partials([hourly(hour, 4.0, epoch=4)])
    (replaced,) = await storage.read_partials("shop", "latency", hour, hour + HOUR, Resolution.HOUR)
    assert (replaced.epoch, replaced.distribution.sum) == (4, 4.0)
    (kept,) = await storage.read_partials("shop", "latency", hour, hour + MINUTE)
    assert kept.distribution.sum == 1.0
