"""Helpers for tests of the Kafka ingest, on the real broker at 127.0.0.1:9092
that ``make test`` starts (``scripts/kafka.sh``). A test that cannot reach it
fails; it never skips.

Messages are produced with confluent-kafka's own Producer, not the client
library's writer, so a test of the consumer does not depend on the code it
would otherwise share a bug with.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import KafkaException, NewTopic

from metaas.v1 import ingest_pb2
from tests.support import ROOT

BOOTSTRAP: Final = "127.0.0.1:9092"
TIMEOUT_S: Final = 30.0
_SCRIPT: Final = ROOT / "scripts" / "kafka.sh"

_lock = threading.Lock()
_admin: AdminClient | None = None
_watermarks: Consumer | None = None


@dataclass(frozen=True)
class Record:
    """One message as stored in a partition."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()

    def header(self, name: str) -> bytes | None:
        """The value of the header ``name`` (the first one), or None."""
        return next((value for key, value in self.headers if key == name), None)


def admin() -> AdminClient:
    """One admin client for the run. It reconnects by itself after a broker
    restart, so it is shared rather than made per call."""
    global _admin
    with _lock:
        if _admin is None:
            _admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
        return _admin


def _watermark_reader() -> Consumer:
    """A consumer that never subscribes (so joins no group), only asks for
    partitions' ends; shared as the admin client is."""
    global _watermarks
    with _lock:
        if _watermarks is None:
            _watermarks = Consumer(
                {"bootstrap.servers": BOOTSTRAP, "group.id": "metaas-test-watermarks"}
            )
        return _watermarks


def unique(prefix: str) -> str:
    """A topic or group name no other test (or earlier run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def create_topic(name: str, partitions: int) -> None:
    futures = admin().create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1)],
        operation_timeout=TIMEOUT_S,
    )
    try:
        futures[name].result(TIMEOUT_S)
    except KafkaException as error:
        raise AssertionError(
            f"cannot create topic {name} on the Kafka broker at {BOOTSTRAP} ({error}); "
            "`make test` starts it, or run scripts/kafka.sh start"
        ) from error
    # Creation returns once the controller has it; a producer or consumer
    # asking a moment later may still be told the topic is unknown.
    wait_for(lambda: len(partition_ids(name)) == partitions, f"topic {name} visible", TIMEOUT_S)


def delete_topics(*names: str) -> None:
    """Delete the topics; a topic already gone is fine."""
    for name, future in admin().delete_topics(list(names), operation_timeout=TIMEOUT_S).items():
        try:
            future.result(TIMEOUT_S)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise AssertionError(f"cannot delete topic {name}: {error}") from error


@contextlib.contextmanager
def topic(prefix: str, partitions: int) -> Iterator[str]:
    """A new, uniquely named topic for the block, deleted after it."""
    name = unique(prefix)
    create_topic(name, partitions)
    try:
        yield name
    finally:
        delete_topics(name)


def partition_ids(name: str) -> list[int]:
    metadata = admin().list_topics(name, timeout=TIMEOUT_S).topics.get(name)
    if metadata is None or metadata.error is not None:
        return []
    return sorted(metadata.partitions)


def high_watermarks(name: str) -> dict[int, int]:
    """Each partition's end: the offset the next message produced to it gets."""
    reader = _watermark_reader()
    return {
        p: reader.get_watermark_offsets(TopicPartition(name, p), TIMEOUT_S)[1]
        for p in partition_ids(name)
    }


def committed_offsets(group: str, name: str) -> dict[int, int]:
    """The group's committed offset of each partition of the topic; negative
    (OFFSET_INVALID) for a partition it never committed."""
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(name, p) for p in partition_ids(name)]
    )
    futures = admin().list_consumer_group_offsets([request], request_timeout=TIMEOUT_S)
    answer = futures[group].result(TIMEOUT_S)
    return {tp.partition: tp.offset for tp in answer.topic_partitions or []}


def lag(group: str, name: str) -> dict[int, int]:
    """Messages of each partition not yet committed by the group (an empty
    partition has none, committed or not)."""
    ends = high_watermarks(name)
    committed = committed_offsets(group, name)
    return {p: end - max(committed.get(p, 0), 0) for p, end in ends.items()}


def wait_consumed(group: str, name: str, timeout: float) -> dict[int, int]:
    """Wait until the group has committed every partition of the topic up to
    its high watermark, which by the ingest's contract means every message
    in it is stored; return the committed offsets. Fails with the lag seen
    last when the timeout passes first."""
    deadline = time.monotonic() + timeout
    last: dict[int, int] | str = "not read yet"
    while True:
        try:
            last = lag(group, name)
            if not any(last.values()):
                return committed_offsets(group, name)
        except KafkaException as error:  # the broker may still be starting
            last = f"unreadable ({error})"
        if time.monotonic() > deadline:
            raise AssertionError(
                f"group {group} has not consumed {name} after {timeout}s; lag: {last}"
            )
        time.sleep(0.2)


def consume_all(name: str, timeout: float = TIMEOUT_S) -> list[Record]:
    """Every message of the topic, read from the beginning up to the high
    watermarks seen at the call, in (partition, offset) order. The reader
    commits nothing."""
    ends = {p: end for p, end in high_watermarks(name).items() if end > 0}
    if not ends:
        return []
    consumer = Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": unique("metaas-test-reader"),
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    records: list[Record] = []
    try:
        consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in ends])
        next_offset = dict.fromkeys(ends, 0)
        deadline = time.monotonic() + timeout
        while any(next_offset[p] < end for p, end in ends.items()):
            if time.monotonic() > deadline:
                raise AssertionError(f"read {next_offset} of {name} in {timeout}s; ends: {ends}")
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                raise AssertionError(f"reading {name}: {error}")
            record = _record(message)
            if record.offset < ends[record.partition]:
                records.append(record)
            next_offset[record.partition] = record.offset + 1
    finally:
        consumer.close()
    return sorted(records, key=lambda r: (r.partition, r.offset))


def _record(message: Message) -> Record:
    partition, offset = message.partition(), message.offset()
    assert partition is not None
    assert offset is not None
    value = message.value()
    key = message.key()
    return Record(
        topic=message.topic() or "",
        partition=partition,
        offset=offset,
        key=key.encode() if isinstance(key, str) else key,
        value=value.encode() if isinstance(value, str) else (value or b""),
        timestamp_ms=message.timestamp()[1],
        headers=tuple(
            (name, data.encode() if isinstance(data, str) else (data or b""))
            for name, data in _header_pairs(message)
        ),
    )


def _header_pairs(message: Message) -> list[tuple[str, str | bytes | None]]:
    found = message.headers() or []
    return list(found.items()) if isinstance(found, dict) else found


class Publisher:
    """A producer for one topic. Messages are sent without waiting;
    :meth:`flush` waits for them and returns where each was stored.

    Idempotence is on, so a retry inside the producer never stores a message
    twice: tests compare stored sums with what they sent, exactly.
    """

    def __init__(self, name: str) -> None:
        self.topic = name
        self._producer = Producer(
            {"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True, "linger.ms": 5}
        )
        self._pending: list[Record | KafkaError | None] = []

    def write(self, request: ingest_pb2.WriteRequest, *, timestamp_ms: int = 0) -> None:
        """Send a WriteRequest keyed by its (first) series' app, as the
        contract asks of producers."""
        key = request.series[0].app.encode() if request.series else None
        self.send(key, request.SerializeToString(), timestamp_ms=timestamp_ms)

    def send(self, key: bytes | None, value: bytes, *, timestamp_ms: int = 0) -> None:
        """Send raw bytes; ``timestamp_ms`` 0 is the producer's clock."""
        index = len(self._pending)
        self._pending.append(None)

        def delivered(error: KafkaError | None, message: Message) -> None:
            self._pending[index] = error if error is not None else _record(message)

        self._producer.produce(
            self.topic, value, key, on_delivery=delivered, timestamp=timestamp_ms
        )
        self._producer.poll(0)

    def flush(self, timeout: float = TIMEOUT_S) -> list[Record]:
        """Wait for every message sent since the last flush; return them as
        stored, in the order they were sent. Fails if any was not stored."""
        left = self._producer.flush(timeout)
        pending, self._pending = self._pending, []
        if left or not all(isinstance(p, Record) for p in pending):
            failed = [p for p in pending if not isinstance(p, Record)]
            raise AssertionError(f"{left} messages unsent, failed deliveries: {failed[:5]}")
        return [p for p in pending if isinstance(p, Record)]


# Count and sum per series, keyed by (app, the series' "part" label).
Totals = dict[tuple[str, str], tuple[int, float]]


def planned_rounds(
    seed: int, now_ms: int, *, apps: Sequence[str], parts: Sequence[str], metric: str, rounds: int
) -> list[list[ingest_pb2.WriteRequest]]:
    """A known load, round by round: one request for each of half the apps
    (in turn), with 1 to 4 samples for each series (one per part label)
    within the 10 minutes before ``now_ms``. Values are multiples of 0.25
    below 1000, so every sum is exact in float64 in any order."""
    rng = random.Random(seed)
    planned = []
    for number in range(rounds):
        requests = []
        for app in apps[number % 2 :: 2]:
            series = []
            for part in parts:
                n = rng.randint(1, 4)
                series.append(
                    ingest_pb2.SeriesSamples(
                        app=app,
                        metric=metric,
                        labels={"part": part},
                        times_ms=[now_ms - rng.randrange(600_000) for _ in range(n)],
                        values=[rng.randrange(4000) / 4 for _ in range(n)],
                    )
                )
            requests.append(ingest_pb2.WriteRequest(series=series))
        planned.append(requests)
    return planned


def add_totals(totals: Totals, series: ingest_pb2.SeriesSamples) -> None:
    key = (series.app, series.labels["part"])
    count, total = totals.get(key, (0, 0.0))
    totals[key] = (count + len(series.values), total + sum(series.values))


def totals_of(requests: Iterable[ingest_pb2.WriteRequest]) -> Totals:
    totals: Totals = {}
    for request in requests:
        for series in request.series:
            add_totals(totals, series)
    return totals


@contextlib.contextmanager
def broker_stopped() -> Iterator[None]:
    """The shared broker stopped for the block and started again after it,
    even when the block fails, so later tests find it answering."""
    _script("stop")
    try:
        yield
    finally:
        _script("start")


def _script(command: str) -> None:
    done = subprocess.run(
        [str(_SCRIPT), command], capture_output=True, text=True, timeout=180, check=False
    )
    if done.returncode != 0:
        raise AssertionError(
            f"scripts/kafka.sh {command} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )


def wait_for(check: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll ``check`` until it returns True."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout}s")
        time.sleep(0.1)
