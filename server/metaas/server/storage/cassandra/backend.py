"""Cassandra backend: partials in hour-bucketed partitions, expiring by TTL.

See schema.py for the table design and session.py for how the driver is used
from asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Final

from opentelemetry.trace import SpanKind

from metaas.server.model import (
    DAY_MS,
    HOUR_MS,
    Labels,
    Partial,
    PartialKey,
    Resolution,
    SeriesKey,
    decode_labels,
    matches,
)
from metaas.server.storage import codec
from metaas.server.storage.cassandra import schema
from metaas.server.storage.cassandra.config import CassandraConfig
from metaas.server.storage.cassandra.schema import MAX_TTL_S
from metaas.server.storage.cassandra.session import NAME, CqlSession, Prepared, Row
from metaas.server.storage.cassandra.statements import CQL
from metaas.server.storage.concurrency import gather_or_cancel
from metaas.server.storage.context import StorageContext

# Series-hours this process has indexed; past this many the memory is reset
# (which costs a few redundant index writes, nothing else).
_INDEXED_LIMIT: Final = 200_000
# A read of at most this many selected series asks each partition for their
# rows only (bucket starts x series, as clustering prefixes); a read of more
# takes the partition's rows and drops the others before decoding them.
_SEEK_SERIES: Final = 64

_SeriesHour = tuple[str, int, str, str]  # app, hour, metric, labels
_PageHandler = Callable[[list[Row]], Awaitable[None]]


class CassandraStorage:
    """Implements :class:`metaas.server.storage.base.Storage` on Cassandra."""

    def __init__(self, config: CassandraConfig, context: StorageContext) -> None:
        self._config = config
        self._retention_ms = context.retention_ms
        self._clock = context.clock
        self._codec = context.codec
        self._tracer = context.telemetry.tracer
        self._session = CqlSession(config)
        self._indexed: set[_SeriesHour] = set()
        self._statements: dict[str, Prepared] = {}

    @property
    def name(self) -> str:
        return NAME

    @property
    def config(self) -> CassandraConfig:
        return self._config

    async def open(self) -> list[str]:
        """Connect, apply (``schema=auto``) or verify the schema, prepare the
        statements; returns what applying the schema did."""
        await self._session.connect()
        try:
            done: list[str] = []
            if self._config.apply_schema_on_open:
                done = await schema.apply(self._session, self._config, self._retention_ms)
            else:
                await schema.verify(self._session, self._config)
            await self._prepare()
        except BaseException:
            await self._session.close()
            raise
        return done

    async def _prepare(self) -> None:
        # The keyspace is a validated identifier; every value is a bind marker.
        texts = {name: cql.format(ks=self._config.keyspace) for name, (cql, _) in CQL.items()}
        prepared = await asyncio.gather(
            *(self._session.prepare(texts[name], read=read) for name, (_, read) in CQL.items())
        )
        self._statements = dict(zip(CQL, prepared, strict=True))

    async def close(self) -> None:
        await self._session.close()

    # -- writes ---------------------------------------------------------------

    async def write_partials(self, partials: Sequence[Partial]) -> None:
        if not partials:
            return
        now = self._clock.now_ms()
        live = [p for p in partials if self._ttl_s(p.last_minute_ms, now) > 0]
        encoded = await codec.encode_distributions([p.distribution for p in live], self._codec)
        insert_partial = self._statements["insert_partial"]
        insert_hourly = self._statements["insert_hourly"]
        requests: list[tuple[Prepared, Sequence[object]]] = []
        new_series: dict[_SeriesHour, int] = {}
        for partial, item in zip(live, encoded, strict=True):
            series, minute = partial.series, partial.minute_ms
            hour = minute - minute % HOUR_MS
            labels = series.labels_key
            if partial.resolution is Resolution.HOUR:
                requests.append(
                    (
                        insert_hourly,
                        (
                            series.app,
                            series.metric,
                            hour - hour % DAY_MS,
                            hour,
                            labels,
                            partial.writer,
                            partial.epoch,
                            item.data,
                            self._ttl_s(partial.last_minute_ms, now),
                        ),
                    )
                )
                continue
            requests.append(
                (
                    insert_partial,
                    (
                        series.app,
                        series.metric,
                        hour,
                        minute,
                        labels,
                        partial.writer,
                        partial.epoch,
                        item.data,
                        self._ttl_s(minute, now),
                    ),
                )
            )
            key = (series.app, hour, series.metric, labels)
            if key not in self._indexed:
                # The index row lives as long as the last minute of its hour.
                new_series[key] = self._ttl_s(Resolution.HOUR.last_minute(hour), now)
        insert_series = self._statements["insert_series"]
        for (app, hour, metric, labels), ttl_s in new_series.items():
            day = hour - hour % DAY_MS
            requests.append((insert_series, (app, day, hour, metric, labels, ttl_s)))
        await self._session.execute_many(requests)
        if len(self._indexed) + len(new_series) > _INDEXED_LIMIT:
            self._indexed.clear()
        self._indexed.update(new_series)

    def _ttl_s(self, minute_ms: int, now_ms: int) -> int:
        """Seconds until ``minute_ms`` leaves the retention (<= 0: already
        out): a row expires a retention after its bucket's last minute."""
        remaining_ms = minute_ms + self._retention_ms - now_ms
        return min(MAX_TTL_S, -(-remaining_ms // 1000))

    # -- reads ----------------------------------------------------------------

    async def read_partials(
        self,
        app: str,
        metric: str,
        start_ms: int,
        end_ms: int,
        resolution: Resolution = Resolution.MINUTE,
        series: Collection[SeriesKey] | None = None,
    ) -> Sequence[Partial]:
        if series is not None and not series:
            return []
        found: list[tuple[int, str, str, Partial]] = []
        series_of: dict[str, SeriesKey] = {}
        hourly = resolution is Resolution.HOUR
        table, size = (schema.HOURLY, DAY_MS) if hourly else (schema.PARTIALS, HOUR_MS)
        wanted = None if series is None else {s.labels_key for s in series}
        seek = wanted is not None and len(wanted) <= _SEEK_SERIES
        sought = sorted(wanted) if seek and wanted is not None else []
        if seek:
            statement = self._statements[
                "select_hourly_series_range" if hourly else "select_series_range"
            ]
        else:
            statement = self._statements["select_hourly_range" if hourly else "select_range"]

        async def read_partition(first: int) -> None:
            low, high = max(start_ms, first), min(end_ms, first + size)
            params: tuple[object, ...]
            if seek:
                starts = list(range(resolution.ceil(low), high, resolution))
                if not starts:
                    return
                params = (app, metric, first, starts, sought)
            else:
                params = (app, metric, first, low, high)

            async def take(rows: list[Row]) -> None:
                if wanted is not None and not seek:
                    rows = [row for row in rows if row[1] in wanted]
                distributions = await codec.decode_distributions([row[4] for row in rows])
                for (minute, labels, writer, epoch, _), dist in zip(
                    rows, distributions, strict=True
                ):
                    key = series_of.get(labels)
                    if key is None:
                        key = series_of[labels] = SeriesKey(app, metric, decode_labels(labels))
                    partial = Partial(key, minute, writer, epoch, dist, resolution)
                    found.append((minute, labels, writer, partial))

            await self._scan(table, statement, params, take)

        await gather_or_cancel(read_partition(first) for first in _buckets(start_ms, end_ms, size))
        # Partitions answer in any order; SQLite's order (its primary key),
        # so sums merged from them agree bit for bit across backends.
        found.sort(key=lambda row: row[:3])
        return [row[3] for row in found]

    async def find_series(
        self, app: str, metric: str, start_ms: int, end_ms: int, matchers: Labels
    ) -> Sequence[SeriesKey]:
        # The series index lists the app's series per hour: one partition per
        # day of the range, no distribution read. Whole hours: a superset.
        if start_ms >= end_ms:
            return []
        first_hour = start_ms - start_ms % HOUR_MS
        # Each series listed once, None when its labels do not match.
        found: dict[str, SeriesKey | None] = {}
        statement = self._statements["select_series"]

        async def read_day(day: int) -> None:
            params = (app, day, max(first_hour, day), min(end_ms, day + DAY_MS))

            async def take(rows: list[Row]) -> None:
                for _, row_metric, labels in rows:
                    if row_metric == metric and labels not in found:
                        key = SeriesKey(app, metric, decode_labels(labels))
                        found[labels] = key if matches(key.labels, matchers) else None

            await self._scan(schema.SERIES, statement, params, take)

        await gather_or_cancel(read_day(day) for day in _buckets(start_ms, end_ms, DAY_MS))
        return [key for key in found.values() if key is not None]

    async def get_partials(self, keys: Sequence[PartialKey]) -> Mapping[PartialKey, Partial]:
        if not keys:
            return {}
        one_minute, one_hour = self._statements["select_one"], self._statements["select_hourly_one"]
        pages = await self._session.execute_many(
            (
                one_hour if key.resolution is Resolution.HOUR else one_minute,
                (
                    key.series.app,
                    key.series.metric,
                    # The partition: the day of an hour, the hour of a minute.
                    key.minute_ms
                    - key.minute_ms % (DAY_MS if key.resolution is Resolution.HOUR else HOUR_MS),
                    key.minute_ms,
                    key.series.labels_key,
                    key.writer,
                ),
            )
            for key in keys
        )
        hits = [(key, rows[0]) for key, rows in zip(keys, pages, strict=True) if rows]
        distributions = await codec.decode_distributions([row[1] for _, row in hits])
        return {
            key: Partial(key.series, key.minute_ms, key.writer, row[0], dist, key.resolution)
            for (key, row), dist in zip(hits, distributions, strict=True)
        }

    async def list_series(
        self, app: str, start_ms: int, end_ms: int, metric: str | None = None
    ) -> Sequence[SeriesKey]:
        if start_ms >= end_ms:
            return []
        first_hour = start_ms - start_ms % HOUR_MS
        hours_of: dict[tuple[str, str], set[int]] = {}
        statement = self._statements["select_series"]

        async def read_day(day: int) -> None:
            params = (app, day, max(first_hour, day), min(end_ms, day + DAY_MS))

            async def take(rows: list[Row]) -> None:
                for hour, row_metric, labels in rows:
                    if metric is None or row_metric == metric:
                        hours_of.setdefault((row_metric, labels), set()).add(hour)

            await self._scan(schema.SERIES, statement, params, take)

        await gather_or_cancel(read_day(day) for day in _buckets(start_ms, end_ms, DAY_MS))

        def covered(hour: int) -> bool:
            return start_ms <= hour and hour + HOUR_MS <= end_ms

        listed = {key for key, hours in hours_of.items() if any(covered(h) for h in hours)}
        # The index knows hours; in the range's partly covered first and last
        # hour, only the partials themselves say which series had data.
        edges = {h for h in (first_hour, end_ms - 1 - (end_ms - 1) % HOUR_MS) if not covered(h)}
        checks = {
            (hour, key[0])
            for key, hours in hours_of.items()
            if key not in listed
            for hour in hours & edges
        }
        seen: set[tuple[str, str]] = set()
        await gather_or_cancel(
            self._labels_in(app, m, hour, start_ms, end_ms, seen) for hour, m in checks
        )
        listed |= {key for key in hours_of if key in seen}
        return [
            SeriesKey(app, series_metric, decode_labels(labels))
            for series_metric, labels in sorted(listed)
        ]

    async def _labels_in(
        self,
        app: str,
        metric: str,
        hour: int,
        start_ms: int,
        end_ms: int,
        seen: set[tuple[str, str]],
    ) -> None:
        params = (app, metric, hour, max(start_ms, hour), min(end_ms, hour + HOUR_MS))

        async def take(rows: list[Row]) -> None:
            seen.update((metric, labels) for (labels,) in rows)

        await self._scan(schema.PARTIALS, self._statements["select_labels"], params, take)

    async def _scan(
        self,
        table: str,
        statement: Prepared,
        params: Sequence[object],
        take: _PageHandler,
    ) -> None:
        """One partition's paged query, with a span of its own."""
        with self._tracer.start_as_current_span(
            f"cassandra SELECT {table}",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system": NAME,
                "db.operation": "SELECT",
                "db.name": self._config.keyspace,
                "db.cassandra.table": table,
                "db.cassandra.consistency_level": self._config.read_consistency,
            },
        ) as span:
            rows = 0

            async def counted(page: list[Row]) -> None:
                nonlocal rows
                rows += len(page)
                await take(page)

            pages = await self._session.for_each_page(statement, params, counted)
            span.set_attribute("metaas.cassandra.pages", pages)
            span.set_attribute("metaas.cassandra.rows", rows)


def _buckets(start_ms: int, end_ms: int, size_ms: int) -> range:
    """Starts of the buckets of ``size_ms`` that overlap ``[start_ms, end_ms)``."""
    if start_ms >= end_ms:
        return range(0)
    return range(start_ms - start_ms % size_ms, end_ms, size_ms)
