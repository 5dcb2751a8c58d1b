"""SQLite backend. sqlite3 blocks, so each connection lives on its own thread:
one for writes, one for reads (WAL journal mode lets them run concurrently).
Small reads use a third connection on the event loop's thread (see
``_INLINE_ROWS``); in WAL mode a reader never waits for the writer."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, TypeVar

from metaas.server.model import (
    MINUTE_MS,
    Labels,
    Partial,
    PartialKey,
    Resolution,
    SeriesKey,
    decode_labels,
)
from metaas.server.sketch import Distribution
from metaas.server.storage import codec
from metaas.server.storage.context import StorageContext
from metaas.server.storage.errors import Invalid, StorageError, Translator, Unavailable
from metaas.server.storage.sqlite import schema
from metaas.server.storage.sqlite.config import SqliteConfig
from metaas.server.storage.sqlite.schema import Select

_T = TypeVar("_T")
_NAME: Final = "sqlite"
# Expired rows are deleted at most this often (reads filter them regardless).
_PURGE_EVERY_MS: Final = MINUTE_MS
# Reads of at most this many rows (a few hundred microseconds of SQLite work)
# run on the event loop itself: the hop to the reader thread and back costs
# more than they do. A read that finds more is done again on the thread.
_INLINE_ROWS: Final = 1_000
_LARGE_MEMORY: Final = 10_000
_SERIES_MEMORY: Final = 200_000
# Series-hours this process has put in the label index; past this many the
# memory is reset (which costs a few redundant index writes, nothing else).
_INDEXED_MEMORY: Final = 200_000


class SqliteStorage:
    """Implements :class:`metaas.server.storage.base.Storage` on one file."""

    def __init__(self, config: SqliteConfig, context: StorageContext) -> None:
        self._config = config
        self._retention_ms = context.retention_ms
        self._clock = context.clock
        self._codec = context.codec
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-write")
        self._reader_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-read")
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._inline: sqlite3.Connection | None = None
        self._last_purge_ms = 0
        # Metrics whose last read found more than _INLINE_ROWS rows go to the
        # reader thread directly, instead of first reading too many rows on
        # the loop; and decoded labels by their stored text, since a query
        # read in pieces sees each series again in every piece. Both are
        # bounded: cleared when full. Used from the loop and the reader thread;
        # single set and dict operations, safe under the interpreter lock.
        self._large: set[tuple[str, str, Resolution, bool]] = set()
        self._series_of: dict[tuple[str, str, str], SeriesKey] = {}
        # (app, metric, labels, hour) already in the label index.
        self._indexed: set[tuple[str, str, str, int]] = set()

    @property
    def name(self) -> str:
        return _NAME

    @property
    def path(self) -> Path:
        return self._config.path

    async def open(self) -> None:
        """Create the file and schema if needed and open the connections."""
        self._writer = await self._run(self._writer_thread, self._connect, True)
        self._reader = await self._run(self._reader_thread, self._connect, False)
        self._inline = self._connect(False)
        # Never wait on the loop: a busy file sends the read to the thread.
        self._inline.execute("PRAGMA busy_timeout=0")

    def _connect(self, apply_schema: bool) -> sqlite3.Connection:
        self._config.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self._config.path, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={self._config.synchronous}")
        connection.execute("PRAGMA busy_timeout=5000")
        if apply_schema:
            schema.apply(connection, self._codec)
        return connection

    async def close(self) -> None:
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        for executor, connection in (
            (self._writer_thread, self._writer),
            (self._reader_thread, self._reader),
        ):
            if connection is not None:
                await self._run(executor, connection.close)
            executor.shutdown(wait=True)
        self._writer = self._reader = None

    async def write_partials(self, partials: Sequence[Partial]) -> None:
        if not partials:
            return
        encoded = await codec.encode_distributions([p.distribution for p in partials], self._codec)
        rows: dict[str, list[tuple[object, ...]]] = {}
        indexed = self._indexed
        new_hours: set[tuple[str, str, str, int]] = set()
        postings: list[tuple[object, ...]] = []
        for p, item in zip(partials, encoded, strict=True):
            series = p.series
            labels = series.labels_key
            if p.resolution is Resolution.MINUTE:
                hour = Resolution.HOUR.floor(p.minute_ms)
                seen = (series.app, series.metric, labels, hour)
                if seen not in indexed and seen not in new_hours:
                    new_hours.add(seen)
                    postings.extend(
                        (series.app, series.metric, name, value, labels, hour)
                        for name, value in series.labels
                    )
            rows.setdefault(schema.TABLES[p.resolution], []).append(
                (series.app, series.metric, p.minute_ms, labels, p.writer, p.epoch, item.data)
            )
        now = self._clock.now_ms()
        purge_before = None
        if now - self._last_purge_ms >= _PURGE_EVERY_MS:
            self._last_purge_ms = now
            purge_before = now - self._retention_ms
        await self._run(self._writer_thread, self._write_sync, rows, postings, purge_before)
        if len(indexed) + len(new_hours) > _INDEXED_MEMORY:
            indexed.clear()
        indexed |= new_hours

    def _write_sync(
        self,
        rows: Mapping[str, list[tuple[object, ...]]],
        postings: list[tuple[object, ...]],
        purge_before: int | None,
    ) -> None:
        connection = _require(self._writer)
        with connection:
            for table, table_rows in rows.items():
                connection.executemany(schema.INSERT_PARTIAL.format(table=table), table_rows)
            connection.executemany(schema.INDEX_LABEL, postings)
            if purge_before is not None:
                # A bucket leaves when its last minute does: the first bucket
                # kept starts that much before the purge's cutoff.
                for resolution, table in schema.TABLES.items():
                    statement = f"DELETE FROM {table} WHERE minute < ?"  # noqa: S608 - constant names
                    kept = purge_before - resolution.last_minute(0)
                    connection.execute(statement, (kept,))
                connection.execute(
                    f"DELETE FROM {schema.LABEL_INDEX} WHERE last_hour < ?",  # noqa: S608
                    (purge_before - Resolution.HOUR.last_minute(0),),
                )

    async def read_partials(
        self,
        app: str,
        metric: str,
        start_ms: int,
        end_ms: int,
        resolution: Resolution = Resolution.MINUTE,
        series: Collection[SeriesKey] | None = None,
    ) -> Sequence[Partial]:
        if resolution.ceil(start_ms) >= end_ms or (series is not None and not series):
            return []  # no bucket starts in the range, or no series is asked for
        select = schema.select(app, metric, start_ms, end_ms, resolution, series)
        where = (app, metric, resolution, series is None)
        rows = None if where in self._large else self._select_inline(select)
        if rows is None:
            # Selecting, decoding and building the partials all happen on the
            # reader thread: the event loop only receives the result.
            return await self._run(
                self._reader_thread, self._read_range, select, where, app, metric, resolution
            )
        distributions = await codec.decode_distributions([row[4] for row in rows])
        return self._partials(app, metric, resolution, rows, distributions)

    def _read_range(
        self,
        select: Select,
        where: tuple[str, str, Resolution, bool],
        app: str,
        metric: str,
        resolution: Resolution,
    ) -> list[Partial]:
        rows = _require(self._reader).execute(*select).fetchall()
        if len(rows) > _INLINE_ROWS:
            if len(self._large) >= _LARGE_MEMORY:
                self._large.clear()
            self._large.add(where)
        else:
            self._large.discard(where)
        distributions = codec.decode_many([row[4] for row in rows])
        return self._partials(app, metric, resolution, rows, distributions)

    def _partials(
        self,
        app: str,
        metric: str,
        resolution: Resolution,
        rows: list[tuple[int, str, str, int, bytes]],
        distributions: list[Distribution],
    ) -> list[Partial]:
        partials = []
        for (minute, labels, writer, epoch, _), dist in zip(rows, distributions, strict=True):
            series = self._series(app, metric, labels)
            partials.append(Partial(series, minute, writer, epoch, dist, resolution))
        return partials

    def _series(self, app: str, metric: str, labels: str) -> SeriesKey:
        """The series of stored ``labels``, decoded once."""
        key = (app, metric, labels)
        series = self._series_of.get(key)
        if series is None:
            if len(self._series_of) >= _SERIES_MEMORY:
                self._series_of.clear()
            series = self._series_of[key] = SeriesKey(app, metric, decode_labels(labels))
        return series

    def _select_inline(self, select: Select) -> list[tuple[int, str, str, int, bytes]] | None:
        """The rows, read on the event loop; None when there are more than
        ``_INLINE_ROWS`` of them or the file is busy (read on the thread)."""
        if self._inline is None:
            return None
        sql, params = select
        try:
            rows = self._inline.execute(f"{sql} LIMIT ?", (*params, _INLINE_ROWS + 1)).fetchall()
        except sqlite3.Error:
            return None  # the thread's read reports it, mapped to a storage error
        return rows if len(rows) <= _INLINE_ROWS else None

    async def find_series(
        self, app: str, metric: str, start_ms: int, end_ms: int, matchers: Labels
    ) -> Sequence[SeriesKey]:
        if start_ms >= end_ms or not matchers:
            return []
        sql, params = schema.select_matching(app, metric, start_ms, matchers)
        rows = self._select_index_inline(sql, params)
        if rows is None:
            rows = await self._run(self._reader_thread, self._select_index, sql, params)
        return [self._series(app, metric, labels) for (labels,) in rows]

    def _select_index_inline(self, sql: str, params: tuple[object, ...]) -> list[tuple[str]] | None:
        if self._inline is None:
            return None
        try:
            return self._inline.execute(sql, params).fetchall()
        except sqlite3.Error:
            return None  # the thread's read reports it, mapped to a storage error

    def _select_index(self, sql: str, params: tuple[object, ...]) -> list[tuple[str]]:
        return _require(self._reader).execute(sql, params).fetchall()

    async def get_partials(self, keys: Sequence[PartialKey]) -> Mapping[PartialKey, Partial]:
        if not keys:
            return {}
        found = await self._run(self._reader_thread, self._select_keys, keys)
        distributions = await codec.decode_distributions([blob for _, blob in found.values()])
        return {
            key: Partial(key.series, key.minute_ms, key.writer, epoch, dist, key.resolution)
            for (key, (epoch, _)), dist in zip(found.items(), distributions, strict=True)
        }

    def _select_keys(self, keys: Sequence[PartialKey]) -> dict[PartialKey, tuple[int, bytes]]:
        connection = _require(self._reader)
        found: dict[PartialKey, tuple[int, bytes]] = {}
        for key in keys:
            row = connection.execute(
                f"SELECT epoch, distribution FROM {schema.TABLES[key.resolution]} "  # noqa: S608 - table names are constants
                "WHERE app = ? AND metric = ? AND minute = ? AND labels = ? AND writer = ?",
                (
                    key.series.app,
                    key.series.metric,
                    key.minute_ms,
                    key.series.labels_key,
                    key.writer,
                ),
            ).fetchone()
            if row is not None:
                found[key] = (row[0], row[1])
        return found

    async def list_series(
        self, app: str, start_ms: int, end_ms: int, metric: str | None = None
    ) -> Sequence[SeriesKey]:
        rows = await self._run(
            self._reader_thread, self._select_series, app, start_ms, end_ms, metric
        )
        return [SeriesKey(app, m, decode_labels(labels)) for m, labels in rows]

    def _select_series(
        self, app: str, start_ms: int, end_ms: int, metric: str | None
    ) -> list[tuple[str, str]]:
        sql = (
            "SELECT DISTINCT metric, labels FROM partials "
            "WHERE app = ? AND minute >= ? AND minute < ?"
        )
        params: tuple[object, ...] = (app, start_ms, end_ms)
        if metric is not None:
            sql += " AND metric = ?"
            params += (metric,)
        return _require(self._reader).execute(sql + " ORDER BY metric, labels", params).fetchall()

    async def _run(
        self, executor: ThreadPoolExecutor, function: Callable[..., _T], *args: object
    ) -> _T:
        with translated:
            return await asyncio.get_running_loop().run_in_executor(executor, function, *args)


def _classify(error: Exception) -> StorageError | None:
    if isinstance(error, sqlite3.OperationalError):
        # Locked, busy, disk I/O or full: the file may work again later.
        return Unavailable(str(error))
    if isinstance(error, sqlite3.DatabaseError):
        return Invalid(str(error))
    if isinstance(error, OSError):
        return Unavailable(str(error))
    if isinstance(error, RuntimeError):  # a closed executor, a newer schema
        return StorageError(str(error))
    return None


# Every call to the file goes through ``_run`` and this translation.
translated: Final = Translator(_NAME, _classify)


def _require(connection: sqlite3.Connection | None) -> sqlite3.Connection:
    if connection is None:
        raise Unavailable("storage is not open", backend=_NAME)
    return connection
