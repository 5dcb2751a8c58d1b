"""The consumer group member and the dead-letter producer, on confluent-kafka
(librdkafka).

librdkafka's calls block, so the consumer is polled on a thread of its own;
the rebalance callbacks run on that thread, inside ``consume``, and hand
their work to the event loop and wait for it: a revoked partition is
released only once the loop has stopped writing for it. Everything else
(commits, watermarks, flushing the producer) runs on the default executor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from metaas.server.config import KafkaConfig
from metaas.server.kafka.checkpoint import Checkpoint
from metaas.server.retry import backoff

log = logging.getLogger(__name__)
T = TypeVar("T")

# A member that stops heartbeating (killed) leaves the group after this;
# its partitions move to the others. The broker accepts 6-300 s by default.
SESSION_TIMEOUT_MS: Final = 10_000
# Blocking calls to the broker give up after this.
CALL_TIMEOUT_S: Final = 10.0

# librdkafka's own log lines; one failing connection repeats its line many
# times a second, so each distinct line is logged at most once per interval.
_REPEAT_INTERVAL_S: Final = 30.0


class _Repeats(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        line = record.getMessage()
        now = time.monotonic()
        if now - self._last.get(line, -_REPEAT_INTERVAL_S) < _REPEAT_INTERVAL_S:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[line] = now
        return True


_LIBRDKAFKA: Final = logging.getLogger("metaas.server.kafka.librdkafka")
_LIBRDKAFKA.addFilter(_Repeats())


def log_client_error(error: KafkaError) -> None:
    """A librdkafka error the client recovers from by itself (a refused
    connection, a timed-out request): logged, each distinct line at most
    once per interval."""
    _LIBRDKAFKA.warning("%s", error.str())


Rebalanced = Callable[[list[tuple[str, int]]], Awaitable[None]]
# Revoked partitions' last checkpoints, by number, to commit before letting go.
Released = Callable[[list[tuple[str, int]]], Awaitable[list[tuple[int, Checkpoint]]]]
Assigned = Callable[[list[tuple[str, int, Checkpoint]]], Awaitable[None]]


class NotOwner(Exception):
    """The group refused a commit: this member no longer owns the partition."""


# Commit errors meaning the member lost its partitions (or is rejoining).
_FENCED: Final = {
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError._ASSIGNMENT_LOST,
}


class Broker:
    def __init__(
        self,
        config: KafkaConfig,
        loop: asyncio.AbstractEventLoop,
        *,
        on_assigned: Assigned,
        on_revoked: Released,
        on_lost: Rebalanced,
        on_error: Callable[[KafkaError], None],
    ) -> None:
        assert config.brokers is not None
        self._config = config
        self._loop = loop
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._on_lost = on_lost
        common = {
            "bootstrap.servers": config.brokers,
            # Called from librdkafka's threads: hand over to the loop.
            "error_cb": lambda error: loop.call_soon_threadsafe(on_error, error),
            "logger": _LIBRDKAFKA,
        }
        self._consumer = Consumer(
            {
                **common,
                "group.id": config.group,
                "partition.assignment.strategy": "cooperative-sticky",
                # Offsets are committed only once what they cover is stored.
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": SESSION_TIMEOUT_MS,
                "heartbeat.interval.ms": SESSION_TIMEOUT_MS // 4,
            }
        )
        self._producer = Producer(
            {
                **common,
                "acks": "all",
                "enable.idempotence": True,
                "compression.type": "zstd",
                "linger.ms": 20,
                # Retried until delivered: a dead letter is never dropped.
                "message.timeout.ms": 0,
            }
        )
        self._poller = ThreadPoolExecutor(1, thread_name_prefix="kafka-poll")
        self._closed = False

    def subscribe(self) -> None:
        self._consumer.subscribe(
            [self._config.topic],
            on_assign=self._assign,
            on_revoke=self._revoke,
            on_lost=self._lose,
        )

    async def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        return await self._loop.run_in_executor(
            self._poller, self._consumer.consume, max_messages, timeout_s
        )

    async def commit(self, checkpoints: Sequence[tuple[int, Checkpoint]]) -> None:
        """Store the checkpoints of these partitions (by number) in the group;
        raise NotOwner if the group refuses any of them."""
        offsets = self._offsets(checkpoints)
        if offsets:
            await asyncio.to_thread(self._commit, offsets)

    def _offsets(self, checkpoints: Sequence[tuple[int, Checkpoint]]) -> list[TopicPartition]:
        return [
            TopicPartition(self._config.topic, number, c.committed, metadata=c.metadata())
            for number, c in checkpoints
            if c.committed is not None
        ]

    def _commit(self, offsets: list[TopicPartition]) -> None:
        try:
            answered = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:
            code = error.args[0].code()
            if code in _FENCED:
                raise NotOwner(error.args[0].str()) from error
            raise
        refused = [tp.error for tp in answered or () if tp.error is not None]
        if refused:
            if any(error.code() in _FENCED for error in refused):
                raise NotOwner(refused[0].str())
            raise KafkaException(refused[0])

    async def end_offsets(self, numbers: Sequence[int]) -> dict[int, int]:
        """Each partition's high watermark, asked of the broker now."""
        return await asyncio.to_thread(self._end_offsets, list(numbers))

    def _end_offsets(self, numbers: list[int]) -> dict[int, int]:
        if not numbers:
            self._consumer.list_topics(self._config.topic, timeout=CALL_TIMEOUT_S)
            return {}
        ends = {}
        for number in numbers:
            partition = TopicPartition(self._config.topic, number)
            _low, high = self._consumer.get_watermark_offsets(
                partition, timeout=CALL_TIMEOUT_S, cached=False
            )
            ends[number] = high
        return ends

    def pause(self, numbers: Sequence[int]) -> None:
        self._consumer.pause([TopicPartition(self._config.topic, n) for n in numbers])

    def resume(self, numbers: Sequence[int]) -> None:
        self._consumer.resume([TopicPartition(self._config.topic, n) for n in numbers])

    def dead_letter(
        self, message: Message, error: str, on_delivery: Callable[[Any, Any], None]
    ) -> None:
        """Produce an invalid message, unchanged, to the dead-letter topic."""
        headers: list[tuple[str, str | bytes | None]] = [
            ("metaas-error", error.encode()),
            ("metaas-topic", str(message.topic()).encode()),
            ("metaas-partition", str(message.partition()).encode()),
            ("metaas-offset", str(message.offset()).encode()),
        ]
        while True:
            try:
                self._producer.produce(
                    self._config.dead_letter_topic,
                    value=message.value(),
                    key=message.key(),
                    headers=headers,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:  # the producer's queue is full: let it send
                self._producer.poll(0.1)
        self._producer.poll(0)

    async def flush_dead_letters(self) -> int:
        """Wait until the dead letters are acknowledged; return how many are not."""
        if len(self._producer) == 0:
            return 0
        remaining: int = await asyncio.to_thread(self._producer.flush, CALL_TIMEOUT_S)
        return remaining

    async def close(self) -> None:
        """Leave the group (the revoke callback runs once more) and stop."""
        if self._closed:
            return
        self._closed = True
        await self._loop.run_in_executor(self._poller, self._consumer.close)
        await asyncio.to_thread(self._producer.flush, CALL_TIMEOUT_S)
        self._poller.shutdown(wait=False)

    # The rebalance callbacks, on the poll thread.

    def _assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Nothing of a partition is consumed before its checkpoint is known.
        for delay in backoff(base_s=0.5, cap_s=CALL_TIMEOUT_S):
            try:
                committed = consumer.committed(partitions, timeout=CALL_TIMEOUT_S)
                break
            except KafkaException as error:
                log.warning("reading the group's committed offsets failed (%s); retrying", error)
                time.sleep(delay)
        taken = [
            (tp.topic, tp.partition, Checkpoint.read(_offset(tp), tp.metadata)) for tp in committed
        ]
        self._wait(self._on_assigned(taken))

    def _revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        released = self._wait(self._on_revoked([(tp.topic, tp.partition) for tp in partitions]))
        # Committed here, on the thread running the callback: the group
        # serves nothing else until the callback returns, so a commit from
        # another thread would wait for it forever (on close, say).
        offsets = self._offsets(released)
        if offsets:
            try:
                self._commit(offsets)
            except Exception as error:  # noqa: BLE001 - the next owner replays from the last commit
                log.info("kafka: final commit of released partitions failed (%s)", error)

    def _lose(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._wait(self._on_lost([(tp.topic, tp.partition) for tp in partitions]))

    def _wait(self, work: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(_run(work), self._loop).result()


async def _run(work: Awaitable[T]) -> T:
    return await work


def _offset(partition: TopicPartition) -> int:
    return -1 if partition.offset == OFFSET_INVALID else int(partition.offset)
