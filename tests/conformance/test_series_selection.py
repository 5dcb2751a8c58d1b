"""Series selection inside storage (storage/base.py): ``find_series`` finds
the series a query's matchers select from an index, and ``read_partials``
with ``series`` returns exactly the partials of those series, on every
backend, at both resolutions, whichever way the backend narrows the read."""

from __future__ import annotations

import numpy as np

from metaas.server.config import ViewsConfig
from metaas.server.model import Partial, Resolution, SeriesKey, matches
from metaas.server.query import QueryEngine, RangeQuery
from metaas.server.query.stats import parse_stat
from metaas.server.sketch import Distribution
from metaas.server.storage import Storage
from tests.conformance.conftest import RETENTION_MS, FixedClock

MINUTE = 60_000
HOUR = 3_600_000
DYNOS = [f"web.{d}" for d in range(80)]  # more than Cassandra's seek threshold
STATUSES = ("2xx", "5xx")


def _stored(start: int, minutes: int) -> list[Partial]:
    rng = np.random.default_rng(11)
    written = []
    for m in range(minutes):
        for dyno in DYNOS:
            for status in STATUSES:
                if (int(dyno[4:]) + m) % 7 == 0:  # gaps: not every series every minute
                    continue
                series = SeriesKey.of("shop", "latency", {"dyno": dyno, "status": status})
                values = rng.lognormal(3.0, 1.0, 3)
                writers = ("w1", "w2") if m % 5 == 0 else ("w1",)
                for writer in writers:
                    written.append(
                        Partial(
                            series, start + m * MINUTE, writer, 1, Distribution.from_values(values)
                        )
                    )
    # Another metric and another app with the same labels: never selected.
    other = SeriesKey.of("shop", "memory", {"dyno": "web.1", "status": "2xx"})
    elsewhere = SeriesKey.of("bank", "latency", {"dyno": "web.1", "status": "2xx"})
    one = Distribution.from_values(np.array([1.0]))
    written += [Partial(s, start, "w1", 1, one) for s in (other, elsewhere)]
    return written


def _key(p: Partial) -> tuple[object, ...]:
    return (p.series, p.minute_ms, p.writer, p.epoch, p.resolution, p.distribution.to_bytes())


async def test_find_series_selects_by_every_matcher(storage: Storage, clock: FixedClock) -> None:
    start = HOUR * (clock.now // HOUR) - 2 * HOUR
    await storage.write_partials(_stored(start, 10))
    end = start + 10 * MINUTE
    one = await storage.find_series(
        "shop", "latency", start, end, (("dyno", "web.7"), ("status", "5xx"))
    )
    assert [s.labels for s in one] == [(("dyno", "web.7"), ("status", "5xx"))]
    assert all(s.app == "shop" and s.metric == "latency" for s in one)
    by_status = await storage.find_series("shop", "latency", start, end, (("status", "2xx"),))
    assert sorted(s.label_map["dyno"] for s in by_status) == sorted(DYNOS)
    assert await storage.find_series("shop", "latency", start, end, (("dyno", "nope"),)) == []
    assert await storage.find_series("shop", "latency", start, end, (("zone", "eu"),)) == []
    # A series with data only outside the range may be listed (an index knows
    # hours), never one whose data left the retention.
    gone = clock.now - RETENTION_MS - 2 * HOUR
    assert (
        await storage.find_series("shop", "latency", gone, gone + HOUR, (("dyno", "web.7"),)) == []
    )


async def test_a_selected_read_returns_exactly_the_selected_series(
    storage: Storage, clock: FixedClock
) -> None:
    start = HOUR * (clock.now // HOUR) - 2 * HOUR
    written = _stored(start, 12)
    await storage.write_partials(written)
    # Both ways a backend may narrow: a few series, and more than a few.
    for matchers in ((("dyno", "web.3"), ("status", "2xx")), (("status", "5xx"),)):
        selected = await storage.find_series("shop", "latency", start, start + HOUR, matchers)
        for low, high in ((start, start + 12 * MINUTE), (start + 3 * MINUTE, start + 7 * MINUTE)):
            read = await storage.read_partials(
                "shop", "latency", low, high, Resolution.MINUTE, selected
            )
            want = [
                p
                for p in written
                if p.series.app == "shop"
                and p.series.metric == "latency"
                and matches(p.series.labels, matchers)
                and low <= p.minute_ms < high
            ]
            assert len(read) == len(want) > 0
            assert sorted(map(_key, read), key=repr) == sorted(map(_key, want), key=repr)
    none = await storage.read_partials(
        "shop", "latency", start, start + HOUR, Resolution.MINUTE, []
    )
    assert none == []


async def test_a_selected_read_of_hourly_rollups(storage: Storage, clock: FixedClock) -> None:
    first = HOUR * (clock.now // HOUR) - 5 * HOUR
    rollups = []
    for h in range(4):
        for dyno in DYNOS[:6]:
            series = SeriesKey.of("shop", "latency", {"dyno": dyno, "status": "2xx"})
            rollups.append(
                Partial(
                    series,
                    first + h * HOUR,
                    "w1",
                    1,
                    Distribution.from_values(np.array([float(h), 2.0])),
                    Resolution.HOUR,
                )
            )
    await storage.write_partials(rollups)
    wanted = [SeriesKey.of("shop", "latency", {"dyno": "web.2", "status": "2xx"})]
    read = await storage.read_partials(
        "shop", "latency", first + HOUR, first + 3 * HOUR, Resolution.HOUR, wanted
    )
    assert sorted((p.series, p.minute_ms) for p in read) == [
        (wanted[0], first + HOUR),
        (wanted[0], first + 2 * HOUR),
    ]


async def test_a_query_with_matchers_answers_as_a_full_read_does(
    storage: Storage, clock: FixedClock
) -> None:
    """The engine narrows by the index; the answer is the one of merging the
    matching series from a full read, bit for bit."""
    start = HOUR * (clock.now // HOUR) - 2 * HOUR
    written = _stored(start, 30)
    await storage.write_partials(written)
    stats = tuple(s for s in map(parse_stat, ("count", "sum", "min", "max", "p50", "p99")) if s)
    engine = QueryEngine(retention_ms=RETENTION_MS, clock=clock, views=ViewsConfig(()))
    for matchers, group_by in (
        ((("dyno", "web.9"), ("status", "2xx")), ()),
        ((("status", "5xx"),), ("dyno",)),
        ((("dyno", "web.4"),), ("status",)),
    ):
        query = RangeQuery(
            "shop", "latency", matchers, start, start + 30 * MINUTE, 5 * MINUTE, stats, group_by
        )
        got = await engine.query_range(storage, query)
        groups: dict[tuple[tuple[str, str], ...], dict[int, list[Distribution]]] = {}
        for p in sorted(written, key=lambda p: (p.minute_ms, p.series.labels_key, p.writer)):
            if p.series.app != "shop" or p.series.metric != "latency":
                continue
            if not matches(p.series.labels, matchers):
                continue
            group = tuple((name, p.series.label_map.get(name, "")) for name in group_by)
            bucket = start + (p.minute_ms - start) // (5 * MINUTE) * (5 * MINUTE)
            groups.setdefault(group, {}).setdefault(bucket, []).append(p.distribution)
        assert [g.labels for g in got] == sorted(groups)
        for result in got:
            merged = {t: Distribution.merged(ds) for t, ds in groups[result.labels].items()}
            assert result.times_ms == tuple(sorted(merged))
            counts = result.values[0]
            assert counts == tuple(float(merged[t].count) for t in result.times_ms)
            assert result.values[1] == tuple(merged[t].sum for t in result.times_ms)
