"""Kafka ingest: consume ``metaas.v1.WriteRequest`` messages, aggregate them
per partition, and store each partition's flushes through the ingest
pipeline's delivery, exactly once over Kafka's at-least-once delivery.

One task consumes and flushes, so a partition's messages, its flush ends and
its intents are ordered without locks. Per partition (see
docs/architecture.md, "Kafka ingest"):

1. messages are validated as gRPC writes are (with the message's timestamp
   as "now", so a replay judges them the same) and aggregated as deltas;
   invalid ones go to the dead-letter topic;
2. a flush ending at offset ``e`` first records ``e`` as an intent in the
   group's committed metadata (a commit Kafka refuses once the partition
   has moved), then queues the partials with epoch ``e`` for every backend;
3. once every backend has stored them, ``e`` becomes the committed offset.

A new owner resumes at the committed offset and ends its first flushes at
the recorded intents, so replayed deltas meet rows whose epoch tells
whether they already hold them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka import KafkaError, Message
from google.protobuf.message import DecodeError
from opentelemetry.metrics import CallbackOptions, Observation

from metaas.server.api.errors import RequestError
from metaas.server.api.validation import validate_write
from metaas.server.clock import Clock
from metaas.server.config import IngestConfig, KafkaConfig, LimitsConfig, ViewsConfig
from metaas.server.ingest import IngestPipeline, SeriesBatch
from metaas.server.kafka.broker import Broker, NotOwner, log_client_error
from metaas.server.kafka.checkpoint import MAX_INTENTS, Checkpoint
from metaas.server.kafka.partition import Partition
from metaas.server.retry import backoff, describe_error
from metaas.server.telemetry import Telemetry
from metaas.v1 import ingest_pb2

log = logging.getLogger(__name__)

WRITER_PREFIX: Final = "kafka/"
# Messages taken per poll, and how long a poll waits for the first.
_POLL_MESSAGES: Final = 1000
_POLL_TIMEOUT_S: Final = 0.1
# Work done on the serving loop before it is let go (queries wait meanwhile).
_SLICE_S: Final = 0.02
# How often lag and the broker's reachability are checked.
_PROBE_INTERVAL_S: Final = 2.0
_PROBE_DEADLINE_S: Final = 5.0
# How long a revoked partition's flushes may take to be stored before they
# are given up (its next owner replays them).
_REVOKE_WAIT_S: Final = 10.0
# Paused partitions resume once the memory held is below this share of the bound.
_RESUME_AT: Final = 0.5


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    topic: str
    partition: int
    committed_offset: int
    end_offset: int
    lag: int
    paused: bool


class KafkaIngest:
    def __init__(
        self,
        config: KafkaConfig,
        pipeline: IngestPipeline,
        *,
        ingest: IngestConfig,
        limits: LimitsConfig,
        retention_ms: int,
        clock: Clock,
        telemetry: Telemetry,
        views: ViewsConfig | None = None,
        on_broker: Callable[[bool], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self._config = config
        self._pipeline = pipeline
        self._ingest = ingest
        self._limits = limits
        self._retention_ms = retention_ms
        self._clock = clock
        self._views = views.projections if views is not None else None
        self._on_broker = on_broker
        self._partitions: dict[int, Partition] = {}
        self._by_writer: dict[str, Partition] = {}
        self._broker: Broker | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._commit_lock = asyncio.Lock()
        self._to_commit: set[int] = set()
        self._commit_wanted = asyncio.Event()
        self._flush_stored = asyncio.Event()  # set each time a flush is stored
        self._last_flush = time.monotonic()
        self._dead_letters_failed = 0
        self._broker_error: str | None = None  # while the broker is unreachable
        self._commit_error: str | None = None
        self._asked_at = 0.0  # when the probe's request under way was sent
        meter = telemetry.meter
        self._messages = meter.create_counter(
            "metaas.kafka.messages",
            unit="{message}",
            description="Messages consumed, by outcome (applied, invalid)",
        )
        self._samples = meter.create_counter(
            "metaas.kafka.samples", unit="{sample}", description="Samples consumed from Kafka"
        )
        meter.create_observable_gauge(
            "metaas.kafka.lag",
            callbacks=[self._observe_lag],
            unit="{message}",
            description="Messages of each owned partition not yet stored on every backend",
        )

    # Lifecycle.

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._broker = Broker(
            self._config,
            loop,
            on_assigned=self._assigned,
            on_revoked=self._revoked,
            on_lost=self._lost,
            on_error=self._broker_failed,
        )
        self._pipeline.attach(WRITER_PREFIX, self._stored)
        self._broker.subscribe()
        self._tasks = [
            asyncio.create_task(self._consume(), name="kafka-consume"),
            asyncio.create_task(self._commit_stored(), name="kafka-commit"),
            asyncio.create_task(self._probe(), name="kafka-probe"),
        ]
        log.info(
            "consuming topic %s as group %s from %s (invalid messages go to %s)",
            self._config.topic,
            self._config.group,
            self._config.brokers,
            self._config.dead_letter_topic,
        )

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop consuming, flush what was consumed, wait (up to
        ``timeout_s``) until it is stored and committed, and leave the group.
        What is not stored by then is replayed by the partitions' next owner."""
        consume = self._tasks[0] if self._tasks else None
        if consume is not None:
            consume.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consume
        try:
            await asyncio.wait_for(self._final_flush(), timeout=timeout_s)
        except Exception as error:  # noqa: BLE001 - the next owner replays it; say why
            log.warning("final Kafka flush incomplete (%s); it will be replayed", error)
        for task in self._tasks[1:]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._broker is not None:
            await self._broker.close()

    async def _final_flush(self) -> None:
        await self._flush()
        await self._pipeline.drain()
        await self._commit(list(self._partitions))

    # Status.

    def partitions(self) -> list[PartitionStatus]:
        found = []
        for number, p in sorted(self._partitions.items()):
            committed = p.checkpoint.committed or 0
            end = p.end_offset if p.end_offset is not None else committed
            found.append(
                PartitionStatus(p.topic, number, committed, end, max(end - committed, 0), p.paused)
            )
        return found

    def problems(self) -> list[str]:
        found = []
        if self._broker_error is not None:
            found.append(f"kafka: brokers {self._config.brokers} unreachable: {self._broker_error}")
        if self._commit_error is not None:
            found.append(f"kafka: committing offsets failed: {self._commit_error}")
        if self._dead_letters_failed:
            found.append(
                f"kafka: {self._dead_letters_failed} dead letters failed to reach "
                f"{self._config.dead_letter_topic}"
            )
        return found

    @property
    def broker_lost(self) -> bool:
        return self._broker_error is not None

    # Consuming.

    async def _consume(self) -> None:
        assert self._broker is not None
        delays = backoff(base_s=0.5, cap_s=5.0)
        while True:
            try:
                messages = await self._broker.poll(_POLL_MESSAGES, _POLL_TIMEOUT_S)
                await self._take_all(messages)
                if time.monotonic() - self._last_flush >= self._ingest.flush_interval_s:
                    await self._flush()
                self._pace()
                delays = backoff(base_s=0.5, cap_s=5.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("consuming from Kafka failed; retrying")
                await asyncio.sleep(next(delays))

    async def _take_all(self, messages: list[Message]) -> None:
        """Take a poll's messages; aggregate them in slices of about
        _SLICE_S of work, letting the serving loop run between slices."""
        started = time.monotonic()
        for message in messages:
            await self._take(message)
            if time.monotonic() - started > _SLICE_S:
                self._settle()
                await asyncio.sleep(0)
                started = time.monotonic()
        self._settle()

    def _settle(self) -> None:
        for partition in self._partitions.values():
            partition.settle()

    async def _take(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._ALL_BROKERS_DOWN:
                self._set_broker_error(error.str())
            elif error.code() != KafkaError._PARTITION_EOF:
                log_client_error(error)
            return
        number, offset = message.partition(), message.offset()
        # Set on every consumed message.
        assert number is not None
        assert offset is not None
        partition = self._partitions.get(number)
        if partition is None or partition.is_duplicate(offset):
            return  # not ours (any more), or already applied
        while (end := partition.boundary_before(offset)) is not None:
            await self._submit(partition, end)
        partition.apply(offset, self._decode(message))
        if (end := partition.boundary_reached()) is not None:
            await self._submit(partition, end)

    def _decode(self, message: Message) -> list[SeriesBatch] | None:
        """The message's samples, or None after sending it to the dead-letter topic."""
        kind, timestamp_ms = message.timestamp()
        now_ms = timestamp_ms if kind and timestamp_ms > 0 else self._clock.now_ms()
        try:
            request = ingest_pb2.WriteRequest.FromString(message.value() or b"")
            batches, samples = validate_write(
                request, now_ms=now_ms, retention_ms=self._retention_ms, limits=self._limits
            )
        except DecodeError as error:
            self._reject(message, f"not a metaas.v1.WriteRequest: {error}", ["value"])
            return None
        except RequestError as error:
            fields = [field for field, _ in error.violations]
            details = "; ".join(f"{field}: {text}" for field, text in error.violations)
            text = f"{error.message}: {details}" if details else error.message
            self._reject(message, text, fields)
            return None
        self._messages.add(1, {"outcome": "applied"})
        self._samples.add(samples)
        return batches

    def _reject(self, message: Message, error: str, fields: list[str]) -> None:
        assert self._broker is not None
        self._messages.add(1, {"outcome": "invalid"})
        # Logged without values: the fields at fault only.
        log.warning(
            "kafka: invalid message %s/%d@%d (%s) sent to %s",
            message.topic(),
            message.partition(),
            message.offset(),
            ", ".join(fields[:5]) or "?",
            self._config.dead_letter_topic,
        )
        self._broker.dead_letter(message, error, self._dead_letter_delivered)

    def _dead_letter_delivered(self, error: Any, _message: Any) -> None:
        if error is not None:  # only when retries are given up (never, unless closing)
            self._dead_letters_failed += 1

    # Flushing.

    async def _flush(self) -> None:
        """End a flush for every partition that consumed something since
        its last: record the ends as intents (one commit), then queue them."""
        assert self._broker is not None
        self._last_flush = time.monotonic()
        ends = {
            number: end
            for number, p in self._partitions.items()
            if (end := p.flush_end()) is not None and len(p.checkpoint.intents) < MAX_INTENTS
        }
        if not ends:
            return
        # Dead letters of the offsets a flush covers are acknowledged first:
        # once committed past, an invalid message is never read again.
        if await self._broker.flush_dead_letters():
            log.warning("kafka: dead letters not acknowledged yet; the flush waits")
            return
        for number, end in ends.items():
            self._partitions[number].checkpoint.begin(end)
        try:
            await self._commit(list(ends))
        except NotOwner as error:
            log.info("kafka: not flushing, the group moved partitions (%s)", error)
            return
        except Exception as error:  # noqa: BLE001 - retried at the next flush
            log.warning("kafka: recording flush intents failed (%s); retrying", error)
            return
        for number, end in ends.items():
            partition = self._partitions.get(number)
            if partition is not None and partition.owned:
                await self._submit(partition, end)

    async def _submit(self, partition: Partition, end: int) -> None:
        await self._pipeline.deliver(partition.writer, end, partition.take(end))

    def _stored(self, writer: str, epoch: int) -> None:
        """A flush is stored on every backend (called by the delivery)."""
        partition = self._by_writer.get(writer)
        if partition is None:
            return
        partition.stored(epoch)
        self._flush_stored.set()
        if partition.owned:
            self._to_commit.add(partition.number)
            self._commit_wanted.set()

    async def _commit(self, numbers: Iterable[int]) -> None:
        assert self._broker is not None
        async with self._commit_lock:
            checkpoints = [
                (n, self._partitions[n].checkpoint) for n in numbers if n in self._partitions
            ]
            await self._broker.commit(checkpoints)

    async def _commit_stored(self) -> None:
        """Commit the checkpoints of stored flushes, batched, retried."""
        delays = backoff(base_s=0.5, cap_s=5.0)
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            numbers, self._to_commit = self._to_commit, set()
            try:
                await self._commit(numbers)
                self._commit_error = None
                delays = backoff(base_s=0.5, cap_s=5.0)
            except NotOwner:
                pass  # the partitions moved: their next owner commits
            except Exception as error:  # noqa: BLE001 - retried; the data is stored
                self._commit_error = describe_error(error)
                self._to_commit |= numbers
                await asyncio.sleep(next(delays))
                self._commit_wanted.set()

    def _pace(self) -> None:
        """Pause consumption while the memory held or a partition's flushes
        not yet stored are at their bound; resume below half of it."""
        assert self._broker is not None
        held = self._pipeline.delivery_held_bytes + sum(
            p.aggregator.held_bytes for p in self._partitions.values()
        )
        limit = self._ingest.max_aggregate_bytes
        pause, resume = [], []
        for number, p in self._partitions.items():
            full = held > limit or len(p.checkpoint.intents) >= MAX_INTENTS
            calm = held < limit * _RESUME_AT and len(p.checkpoint.intents) < MAX_INTENTS // 2
            if full and not p.paused:
                pause.append(number)
            elif p.paused and calm:
                resume.append(number)
        if pause:
            log.warning(
                "kafka: pausing partitions %s: about %d MiB held, not yet stored (limit %d MiB)",
                pause,
                held >> 20,
                limit >> 20,
            )
            self._broker.pause(pause)
            for number in pause:
                self._partitions[number].paused = True
        if resume:
            log.info("kafka: resuming partitions %s", resume)
            self._broker.resume(resume)
            for number in resume:
                self._partitions[number].paused = False

    # The group's rebalances (run on the loop, while the poll thread waits).

    async def _assigned(self, taken: list[tuple[str, int, Checkpoint]]) -> None:
        for topic, number, checkpoint in taken:
            partition = Partition(
                topic,
                number,
                checkpoint,
                hot_minutes=self._ingest.hot_minutes,
                views=self._views,
            )
            self._partitions[number] = self._by_writer[partition.writer] = partition
            log.info(
                "kafka: took partition %s/%d at offset %s%s",
                topic,
                number,
                "(earliest)" if checkpoint.committed is None else checkpoint.committed,
                f", replaying to flush ends {checkpoint.intents}" if checkpoint.intents else "",
            )

    async def _revoked(self, given: list[tuple[str, int]]) -> list[tuple[int, Checkpoint]]:
        """Let go of partitions: drop what was not flushed (the next owner
        replays it), wait a while for flushes under way to be stored, give
        up the rest; return their checkpoints, which the callback commits."""
        released = [p for _, n in given if (p := self._partitions.pop(n, None)) is not None]
        for partition in released:
            partition.owned = False
        deadline = time.monotonic() + _REVOKE_WAIT_S
        while any(p.in_flight for p in released) and (left := deadline - time.monotonic()) > 0:
            self._flush_stored.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_stored.wait(), left)
        for partition in released:
            if partition.in_flight:
                dropped = self._pipeline.withdraw(partition.writer)
                log.warning(
                    "kafka: partition %d released with %d flushes not stored; "
                    "its next owner replays them",
                    partition.number,
                    dropped,
                )
            self._by_writer.pop(partition.writer, None)
        if released:
            log.info("kafka: released partitions %s", [p.number for p in released])
        return [(p.number, p.checkpoint) for p in released]

    async def _lost(self, given: list[tuple[str, int]]) -> None:
        """Partitions taken away without a revoke (the session expired):
        another replica may own them already, so nothing more is written."""
        for _, number in given:
            partition = self._partitions.pop(number, None)
            if partition is not None:
                partition.owned = False
                self._pipeline.withdraw(partition.writer)
                self._by_writer.pop(partition.writer, None)
                log.warning("kafka: lost partition %d (session expired)", number)

    # The broker's health and the lag.

    def _broker_failed(self, error: KafkaError) -> None:
        # One connection dropping (an idle one the broker closed) is not the
        # broker lost: the probe tells that; every broker down is.
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._set_broker_error(error.str())
        else:
            log_client_error(error)

    def _set_broker_error(self, error: str | None) -> None:
        was_lost = self._broker_error is not None
        self._broker_error = error
        if was_lost != (error is not None):
            if error is not None:
                log.warning("kafka: brokers unreachable: %s", error)
            else:
                log.info("kafka: brokers reachable again")
            if self._on_broker is not None:
                asyncio.get_running_loop().create_task(self._on_broker(error is None))

    async def _probe(self) -> None:
        """Ask the broker for the partitions' ends every few seconds. No
        answer within the deadline means the broker is lost: librdkafka's
        own timeout is not always kept while every broker is down, so the
        wait is bounded here, and one request at a time is left running."""
        assert self._broker is not None
        asking: asyncio.Future[dict[int, int]] | None = None
        while True:
            await asyncio.sleep(_PROBE_INTERVAL_S)
            asking = await self._probe_once(asking)

    async def _probe_once(
        self, asking: asyncio.Future[dict[int, int]] | None
    ) -> asyncio.Future[dict[int, int]] | None:
        """One probe; returns the request still unanswered, if any."""
        assert self._broker is not None
        if asking is None:
            asking = asyncio.ensure_future(self._broker.end_offsets(list(self._partitions)))
            # Its outcome is read below, or not at all when the probe stops
            # first (the consumer closing): then it is dropped quietly.
            asking.add_done_callback(_dropped)
            self._asked_at = time.monotonic()
        done, _ = await asyncio.wait({asking}, timeout=_PROBE_DEADLINE_S)
        if not done:
            waited = time.monotonic() - self._asked_at
            self._set_broker_error(f"no answer from the brokers for {waited:.0f} s")
            return asking
        try:
            ends = asking.result()
        except Exception as error:  # noqa: BLE001 - reported as the broker being lost
            self._set_broker_error(describe_error(error))
            return None
        self._set_broker_error(None)
        for number, end in ends.items():
            partition = self._partitions.get(number)
            if partition is not None:
                partition.end_offset = end
        return None

    def _observe_lag(self, _options: CallbackOptions) -> Iterable[Observation]:
        for status in self.partitions():
            yield Observation(
                status.lag, {"topic": status.topic, "partition": str(status.partition)}
            )


def _dropped(request: asyncio.Future[dict[int, int]]) -> None:
    if not request.cancelled():
        request.exception()  # marks it retrieved
