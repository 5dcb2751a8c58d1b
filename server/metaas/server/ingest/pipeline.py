"""Durable ingest: validated writes go to the write-ahead log, are acknowledged
once on disk, aggregate per minute in memory, and every flush interval the
current log segment is sealed and its aggregates are delivered to each write
target (one backend, or two during a migration). See docs/architecture.md for
the guarantees and why they hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

from opentelemetry.metrics import CallbackOptions, Observation

from metaas.server.clock import Clock
from metaas.server.config import IngestConfig, ViewsConfig
from metaas.server.ingest import records
from metaas.server.ingest.aggregator import Aggregator, PendingPartial
from metaas.server.ingest.delivery import Delivery
from metaas.server.ingest.idempotency import IdempotencyKeys, ScopedKey
from metaas.server.ingest.records import SeriesBatch, WriteBatch
from metaas.server.ingest.wal import (
    Segment,
    SegmentId,
    WriteAheadLog,
    list_segments,
    read_segment,
)
from metaas.server.retry import backoff
from metaas.server.storage.base import Storage
from metaas.server.telemetry import Telemetry

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """Ingest is over a configured bound; the caller should retry later."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


# app -> roles of the backends its writes go to, authoritative first.
WriteRouting = Callable[[str], Sequence[str]]
# The role of a lone backend: migration.stages.Role.OLD's value, written out
# so that ingest imports nothing of the migration package.
LONE_ROLE: Final = "old"


class IngestPipeline:
    def __init__(
        self,
        config: IngestConfig,
        *,
        retention_ms: int,
        storage: Storage | Mapping[str, Storage],
        clock: Clock,
        telemetry: Telemetry,
        routing: WriteRouting | None = None,
        views: ViewsConfig | None = None,
    ) -> None:
        self._config = config
        self._retention_ms = retention_ms
        self._clock = clock
        # Write targets are keyed by role, as routing names them.
        targets = dict(storage) if isinstance(storage, Mapping) else {LONE_ROLE: storage}
        only = tuple(targets)[:1]
        self._routing: WriteRouting = routing or (lambda _app: only)
        # A fresh writer identity per run: partials flushed by an earlier run
        # are never overwritten by this one's (smaller) in-memory state.
        self.generation = secrets.token_hex(8)
        # The labels projected into views, for live writes and replays alike.
        self._views = views.projections if views is not None else None
        self._aggregator = Aggregator(hot_minutes=config.hot_minutes, views=self._views)
        self._keys = IdempotencyKeys(
            int(config.idempotency_window_s * 1000), config.idempotency_max_bytes, clock
        )
        self._wal = WriteAheadLog(config.wal_dir, self.generation, fsync=config.fsync)
        self._delivery = Delivery(targets, on_complete=self._segment_stored, telemetry=telemetry)
        self._old_segments: list[Segment] = []
        # Writers other than this run's log (Kafka partitions): on_stored
        # of their flushes, by writer prefix.
        self._writers: dict[str, Callable[[str, int], None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._seal_lock = asyncio.Lock()
        meter = telemetry.meter
        self._samples = meter.create_counter(
            "metaas.ingest.samples", unit="{sample}", description="Samples made durable"
        )
        self._loop_errors = meter.create_counter(
            "metaas.ingest.flush.loop_errors", unit="{error}", description="Flush loop failures"
        )
        meter.create_observable_gauge(
            "metaas.ingest.aggregates",
            callbacks=[self._observe_aggregates],
            unit="{aggregate}",
            description="Per-minute aggregates held in memory",
        )

    def _observe_aggregates(self, _options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(len(self._aggregator))

    def write_lag_s(self) -> dict[str, float]:
        """Per role: age of the oldest sealed work not yet stored on its backend."""
        return self._delivery.lag_s()

    async def start(self) -> None:
        """Reload idempotency keys from earlier runs' log segments, open this
        run's log, and start delivering (earlier segments first)."""
        await self._wal.acquire()  # before reading the directory: WalLocked if in use
        self._old_segments = await asyncio.to_thread(list_segments, self._config.wal_dir)
        restored: list[records.KeyEntry] = []
        for segment in self._old_segments:
            for record in await asyncio.to_thread(_read_records, segment, False):
                if isinstance(record, list):
                    restored.extend(record)
                elif record.batch.idempotency_key:
                    restored.append(self._keys.entry(record))
        # Oldest first: the keys are kept ordered by expiry.
        for entry in sorted(restored, key=lambda e: e.expires_ms):
            self._keys.restore(entry)
        if self._keys.used_bytes > self._keys.limit_bytes:
            # Unexpired keys are kept whatever the bound (forgetting one would
            # let its retry apply twice); new keys wait until enough expire.
            log.warning(
                "restored idempotency keys hold %d bytes, over the limit of %d "
                "(--idempotency-max-bytes): keyed writes with new keys are refused "
                "until enough of them expire",
                self._keys.used_bytes,
                self._keys.limit_bytes,
            )
        for segment in self._old_segments:
            self._wal.track(segment)
        await self._wal.open(records.encode_keys(self._keys.snapshot()))
        self._delivery.start()
        self._task = asyncio.create_task(self._run(), name="ingest-flush")

    async def write(self, batch: WriteBatch, *, caller: str) -> int:
        """Make a validated batch durable and aggregated; return the number
        of samples accepted (the first answer, for a retried idempotency key).

        An idempotency key belongs to ``caller`` (the authenticated identity)
        and the batch's apps. Raises KeyReused when the key was used for a
        different body within the window, and KeysFull, with nothing applied,
        when remembering one more key would pass the byte bound."""
        self._admit()
        key = batch.idempotency_key
        if not key:
            return await self._append(batch, None)
        apps = (part.series.app for part in batch.series)
        scoped = ScopedKey.of(key, caller, apps, batch.fingerprint)
        answered = self._keys.answered(scoped)
        if answered is not None:
            return answered
        first = self._keys.in_flight(scoped)
        if first is not None:
            return await asyncio.shield(first)
        # The key stays in flight until the log has resolved the append, even
        # if this caller is cancelled meanwhile (the record may still be
        # applied), so a retry never appends the same request twice.
        task = self._keys.begin(scoped, lambda: self._append(batch, scoped))
        return await asyncio.shield(task)

    def _admit(self) -> None:
        backlog = self._wal.backlog_bytes
        if backlog > self._config.max_backlog_bytes:
            raise Overloaded(
                f"{backlog} bytes of acknowledged writes are not stored yet (limit "
                f"{self._config.max_backlog_bytes}): storage is behind",
                retry_after_s=self._config.flush_interval_s,
            )
        if len(self._aggregator) > self._config.max_aggregates:
            raise Overloaded(
                f"{len(self._aggregator)} aggregates in memory (limit "
                f"{self._config.max_aggregates})",
                retry_after_s=self._config.flush_interval_s,
            )
        held = self._aggregator.held_bytes + self._delivery.held_bytes
        limit = self._config.max_aggregate_bytes
        if held > limit:
            raise Overloaded(
                f"about {held >> 20} MiB of aggregates in memory, being aggregated or waiting "
                f"to be stored (limit {limit >> 20} MiB, --max-aggregate-bytes): storage is behind",
                retry_after_s=self._config.flush_interval_s,
            )

    async def _append(self, batch: WriteBatch, scoped: ScopedKey | None) -> int:
        recorded_ms = self._clock.now_ms()
        scope = "" if scoped is None else scoped.scope
        payload = records.encode_write(records.WriteRecord(recorded_ms, scope, batch))
        accepted = batch.samples

        def apply() -> int:
            self._aggregator.apply(batch.series)
            if scoped is not None:
                self._keys.record(scoped, accepted, recorded_ms)
            self._samples.add(accepted)
            return accepted

        return await self._wal.append(payload, apply)

    async def seal(self) -> None:
        """Seal the current log segment and queue its aggregates for every
        write target."""
        async with self._seal_lock:
            epoch, pending = await self._wal.rotate(
                lambda: records.encode_keys(self._keys.snapshot()),
                lambda sealed: (sealed, self._aggregator.take_dirty()),
            )
            await self._delivery.submit((self.generation, epoch), self._split(pending))
            self._aggregator.evict(self._clock.now_ms())

    async def flush(self) -> None:
        """Seal, then wait until every target has stored everything sealed."""
        await self.seal()
        await self._delivery.drain()

    async def stop(self) -> None:
        """Stop the flush loop, recover earlier runs' segments, flush what is
        left, close the log. What cannot be stored in time stays in the log
        for the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await asyncio.wait_for(self._final_flush(), timeout=30)
        except Exception as error:  # noqa: BLE001 - the log keeps the data; say why
            log.error("final flush failed (%r); the log will be replayed on next start", error)
        finally:
            await self._delivery.stop()
            await self._wal.close()

    async def _final_flush(self) -> None:
        await self._recover()
        await self.flush()

    async def _run(self) -> None:
        """Recover, then seal every interval. An unexpected error (disk full
        while starting a segment, say) is logged and retried with backoff;
        it never stops flushing for good."""
        interval = self._config.flush_interval_s
        delays = backoff(base_s=interval, cap_s=30.0)
        recovered = False
        while True:
            try:
                if not recovered:
                    await self._recover()
                    recovered = True
                await asyncio.sleep(interval)
                # Shielded: stop() cancels this loop, and a seal cut between
                # sealing the segment and queueing its work would leave that
                # segment undelivered (and on disk) until the next start.
                await asyncio.shield(self.seal())
                delays = backoff(base_s=interval, cap_s=30.0)
            except Exception:
                log.exception("flush loop failed; retrying")
                self._loop_errors.add(1)
                await asyncio.sleep(next(delays))

    async def _recover(self) -> None:
        """Queue the data of earlier runs' segments under their own writer
        identity and epoch (merged, so each is applied exactly once)."""
        cutoff = self._clock.now_ms() - self._retention_ms
        while self._old_segments:
            segment = self._old_segments[0]
            aggregator = await asyncio.to_thread(
                _aggregate_segment, segment, self._config.hot_minutes, cutoff, self._views
            )
            pending = aggregator.take_dirty()
            log.info("recovering wal segment %s (%d aggregates)", segment.path.name, len(pending))
            await self._delivery.submit((segment.generation, segment.epoch), self._split(pending))
            self._old_segments.pop(0)

    def _split(self, pending: list[PendingPartial]) -> dict[str, list[PendingPartial]]:
        """Each pending aggregate under every target its app writes to."""
        parts: dict[str, list[PendingPartial]] = defaultdict(list)
        targets_of: dict[str, Sequence[str]] = {}
        for item in pending:
            app = item.series.app
            if app not in targets_of:
                targets_of[app] = self._routing(app)
            for name in targets_of[app]:
                parts[name].append(item)
        return parts

    def attach(self, prefix: str, on_stored: Callable[[str, int], None]) -> None:
        """Take flushes of writers named ``prefix...`` that another source
        keeps durable (a Kafka partition: see :meth:`deliver`);
        ``on_stored(writer, epoch)`` is called once a flush is stored on
        every target that had work from it."""
        self._writers[prefix] = on_stored

    async def deliver(self, writer: str, epoch: int, pending: list[PendingPartial]) -> None:
        """Queue a flush of an attached writer for every write target of its
        apps, behind this server's own flushes (FIFO per target)."""
        await self._delivery.submit((writer, epoch), self._split(pending))

    def withdraw(self, writer: str) -> int:
        """Drop an attached writer's flushes not stored yet (see Delivery.withdraw)."""
        return self._delivery.withdraw(writer)

    @property
    def delivery_held_bytes(self) -> int:
        """Estimated memory of the flushes waiting to be stored."""
        return self._delivery.held_bytes

    async def drain(self) -> None:
        """Wait until every queued flush is stored."""
        await self._delivery.drain()

    async def _segment_stored(self, segment: SegmentId) -> None:
        writer, epoch = segment
        for prefix, on_stored in self._writers.items():
            if writer.startswith(prefix):
                on_stored(writer, epoch)
                return
        await self._wal.delete(Segment.named(self._config.wal_dir, writer, epoch))

    def problems(self) -> list[str]:
        """One line per ingest step failing now (the log, storing on a
        backend, deleting stored segments, the flush loop); empty when
        healthy. Acknowledged data is safe in the log meanwhile."""
        found = self._wal.problems() + self._delivery.problems()
        if self._task is not None and self._task.done() and not self._task.cancelled():
            found.append(f"flush loop stopped: {self._task.exception()!r}")
        return found


def _read_records(
    segment: Segment, samples: bool = True
) -> list[records.WriteRecord | list[records.KeyEntry]]:
    """A segment's records; without their samples unless ``samples``."""
    try:
        return [records.decode(p, samples=samples) for p in read_segment(segment.path)]
    except FileNotFoundError:  # recovered and deleted by an interrupted earlier pass
        return []


def _aggregate_segment(
    segment: Segment, hot_minutes: int, cutoff_ms: int, views: tuple[str, ...] | None
) -> Aggregator:
    """A segment's writes as deltas (runs on a worker thread)."""
    aggregator = Aggregator(hot_minutes=hot_minutes, all_incomplete=True, views=views)
    for record in _read_records(segment):
        if isinstance(record, records.WriteRecord):
            aggregator.apply(_within_retention(record.batch.series, cutoff_ms))
    return aggregator


def _within_retention(batches: Sequence[SeriesBatch], cutoff_ms: int) -> list[SeriesBatch]:
    kept = []
    for batch in batches:
        mask = batch.times_ms >= cutoff_ms
        if bool(mask.all()):
            kept.append(batch)
        elif bool(mask.any()):
            kept.append(SeriesBatch(batch.series, batch.times_ms[mask], batch.values[mask]))
    return kept
