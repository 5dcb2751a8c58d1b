"""The Kafka ingest scenario of issue 16: samples/s from a topic to storage
(the embedded store), with one ``metaas serve`` consuming it and then two in
one consumer group, beside the gRPC ingest figure.

Each run gets a topic of 6 partitions, produced before any server starts:
10,000-sample ``WriteRequest`` messages (100 series x 100 samples, the shape
of the gRPC ingest scenario's requests), keyed by app, zstd. The consumers
start in a fresh group, and the topic is consumed when the group's committed
offsets reach every partition's high watermark: a server commits an offset
only once what it covers is stored (docs/kafka.md). Each run produces its
own topic rather than reusing the first one, so both consume samples of the
same age, inside the server's hot window.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import KafkaException, NewTopic

from bench import data
from bench._process import ROOT, Child, cpu_seconds, metaas_server, serve_accepts
from bench.client import counted
from bench.scenarios import FLUSH_INTERVAL_S, Settings, ingest, now_ms

T = TypeVar("T")
BROKERS = "127.0.0.1:9092"
PARTITIONS = 6
SERIES = 100  # per message, of one app
SAMPLES_PER_MESSAGE = 10_000
DISTINCT = 4  # distinct messages per app, replayed
# The topic holds this many samples per second of --duration (15 M at the
# default 10 s), so a consumer at the target rate takes 1.5 times the load
# duration of the other scenarios.
SAMPLES_PER_DURATION_S = 1_500_000
POLL_S = 0.1  # between two reads of the group's committed offsets
TIMEOUT_S = 600.0
_BROKER_PID = ROOT / ".services" / "kafka" / "run" / "kafka.pid"


def supported() -> bool:
    """Whether this server consumes Kafka (``serve --kafka-brokers``)."""
    return serve_accepts("--kafka-brokers")


def run(settings: Settings, grpc_ingest: dict[str, Any] | None) -> dict[str, Any]:
    """One consumer, then two in one group, each on a fresh topic, group and
    database; ``grpc_ingest`` is the embedded store's gRPC ingest figure of
    this run, measured here when the backends scenario did not run."""
    if not supported():
        raise RuntimeError("this server has no --kafka-brokers: no Kafka ingest to measure")
    messages = _messages_per_partition(settings)
    found: dict[str, Any] = {
        "brokers": BROKERS,
        "partitions": PARTITIONS,
        "shape": f"{PARTITIONS} partitions, one app each; {messages} messages per partition "
        f"of {SERIES} series x {SAMPLES_PER_MESSAGE // SERIES} samples "
        f"({DISTINCT} distinct per app, replayed), keyed by app, zstd",
        "flush_interval_s": FLUSH_INTERVAL_S,
    }
    if grpc_ingest is None:
        found["grpc_ingest"] = _grpc_ingest(settings)
    found["one_consumer"] = _measure(settings, "1", consumers=1, messages=messages)
    found["two_consumers"] = _measure(settings, "2", consumers=2, messages=messages)
    if settings.profiler is not None:
        found["profile"] = _profile(settings, messages)
    return found


def _messages_per_partition(settings: Settings) -> int:
    samples = settings.duration_s * SAMPLES_PER_DURATION_S
    return max(10, round(samples / SAMPLES_PER_MESSAGE / PARTITIONS))


def _grpc_ingest(settings: Settings) -> dict[str, Any]:
    """The gRPC ingest scenario on a fresh embedded store, without profiling."""
    server = metaas_server(
        "kafka-grpc",
        f"sqlite:///{settings.work / 'kafka-grpc.db'}",
        settings.work,
        flush_interval_s=FLUSH_INTERVAL_S,
    )
    with server:
        measured, _ = ingest(dataclasses.replace(settings, profiler=None), server, "kafka-grpc")
    return measured


@dataclasses.dataclass(frozen=True, slots=True)
class _Topic:
    name: str
    apps: list[str]  # the app of partition i is apps[i]
    messages: int  # in all
    produced_ms: int  # the samples lie in the minute before this
    produce_s: float
    megabytes: float  # of messages, before compression


class _Admin:
    """The broker's view: topics, high watermarks and a group's offsets."""

    def __init__(self) -> None:
        self._client = AdminClient({"bootstrap.servers": BROKERS})
        # Never subscribes, so joins no group: it only asks for partitions' ends.
        self._ends = Consumer({"bootstrap.servers": BROKERS, "group.id": "bench-watermarks"})

    def create(self, topic: str) -> None:
        _answer(self._client.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic], "create")

    def high(self, topic: str) -> dict[int, int]:
        """Each partition's high watermark (none when the topic does not exist)."""
        partitions = self._client.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: self._ends.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """The group's committed offset of each partition (0 before any)."""
        asked = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        futures = self._client.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, asked)]
        )
        found = _answer(futures[group], "the group's offsets").topic_partitions
        return {tp.partition: max(tp.offset, 0) for tp in found}

    def delete(self, topics: list[str], group: str) -> None:
        """Drop what a run created, so runs do not fill the broker's disk."""
        # The dead-letter topic exists only if something was sent there; and
        # a failure here must not hide the run's own.
        for future in self._client.delete_topics(topics).values():
            with suppress(KafkaException, TimeoutError):
                _answer(future, "delete")
        with suppress(KafkaException, TimeoutError):
            _answer(self._client.delete_consumer_groups([group])[group], "delete")

    def close(self) -> None:
        self._ends.close()


def _answer(future: Future[T], what: str, timeout_s: float = 30) -> T:
    try:
        return future.result(timeout_s)
    except TimeoutError:
        raise TimeoutError(f"the broker did not answer ({what}) in {timeout_s:g}s") from None


def _produce(admin: _Admin, topic: str, apps: list[str], per_partition: int) -> _Topic:
    """Fill ``topic``: partition i holds app i's messages, keyed by its name."""
    admin.create(topic)
    produced = now_ms()
    bodies = [
        data.ingest_requests(app, produced, count=DISTINCT, series=SERIES, seed=i)
        for i, app in enumerate(apps)
    ]
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    producer = Producer({"bootstrap.servers": BROKERS, "compression.type": "zstd", "linger.ms": 50})
    started = time.monotonic()
    size = 0
    for n in range(per_partition):
        for partition, app in enumerate(apps):
            body = bodies[partition][n % DISTINCT]
            size += len(body)
            while True:
                try:
                    producer.produce(
                        topic, body, key=app.encode(), partition=partition, on_delivery=delivered
                    )
                    break
                except BufferError:  # the producer's queue is full: let it send
                    producer.poll(0.1)
        producer.poll(0)
    if producer.flush(120) or failures:
        raise RuntimeError(f"producing to {topic} failed: {failures[:3]}")
    produce_s = time.monotonic() - started
    high = admin.high(topic)
    if high != dict.fromkeys(range(PARTITIONS), per_partition):
        raise RuntimeError(f"{topic} holds {high}, expected {per_partition} per partition")
    return _Topic(topic, apps, per_partition * PARTITIONS, produced, produce_s, size / 1e6)


@contextmanager
def _topic(settings: Settings, label: str, per_partition: int) -> Iterator[tuple[_Admin, _Topic]]:
    admin = _Admin()
    name = f"bench-kafka-{settings.run_id}-{label}"
    apps = [f"bench-kafka{label}-{p}-{settings.run_id}" for p in range(PARTITIONS)]
    try:
        yield admin, _produce(admin, name, apps, per_partition)
    finally:
        admin.delete([name, _dead_letter(name)], _group(name))
        admin.close()


def _dead_letter(topic: str) -> str:
    return f"{topic}.dead-letter"


def _group(topic: str) -> str:
    return f"{topic}.group"


def _servers(settings: Settings, label: str, topic: str, consumers: int) -> list[Child]:
    """``consumers`` servers in one group, sharing one database file."""
    storage = f"sqlite:///{settings.work / f'kafka-{label}.db'}"
    extra = (
        "--kafka-brokers",
        BROKERS,
        "--kafka-topic",
        topic,
        "--kafka-group",
        _group(topic),
        "--kafka-dead-letter-topic",
        _dead_letter(topic),
    )
    return [
        metaas_server(
            f"kafka-{label}-{i}",
            storage,
            settings.work,
            flush_interval_s=FLUSH_INTERVAL_S,
            extra=extra,
        )
        for i in range(consumers)
    ]


@dataclasses.dataclass(frozen=True, slots=True)
class _Point:
    """One change of the group's committed offsets."""

    at_s: float  # since the servers were started
    messages: int  # committed, summed over the partitions
    servers_cpu_s: float
    broker_cpu_s: float | None


def _broker_pid() -> int | None:
    """The local broker's pid (scripts/kafka.sh records it), for its CPU."""
    try:
        pid = int(_BROKER_PID.read_text().strip())
        cpu_seconds(pid)
    except (OSError, ValueError):
        return None
    return pid


def _watch(
    admin: _Admin, topic: _Topic, servers: list[Child], started: float, broker: int | None
) -> list[_Point]:
    """The committed offsets at each change, until every partition's reaches
    its high watermark."""
    group = _group(topic.name)
    end = topic.messages // PARTITIONS
    points: list[_Point] = []
    last = 0
    while True:
        committed = admin.committed(group, topic.name)
        total = sum(committed.values())
        at_s = time.monotonic() - started
        if total != last:
            last = total
            points.append(
                _Point(
                    at_s,
                    total,
                    sum(s.cpu_seconds() for s in servers if s.process is not None),
                    cpu_seconds(broker) if broker is not None else None,
                )
            )
        if all(committed.get(p, 0) >= end for p in range(PARTITIONS)):
            return points
        for server in servers:
            if server.process is not None and server.process.poll() is not None:
                raise RuntimeError(f"{server.name} exited:\n{server.log_tail()}")
        if at_s > TIMEOUT_S:
            raise TimeoutError(f"{total} of {topic.messages} messages committed after {at_s:.0f}s")
        time.sleep(POLL_S)


def _measure(settings: Settings, label: str, *, consumers: int, messages: int) -> dict[str, Any]:
    """Start ``consumers`` servers at once on a freshly produced topic and
    time them until the group has committed every message."""
    with _topic(settings, label, messages) as (admin, topic):
        servers = _servers(settings, label, topic.name, consumers)
        broker = _broker_pid()
        started = time.monotonic()

        def start(server: Child) -> float:
            server.start()
            return time.monotonic() - started

        try:
            with ThreadPoolExecutor(consumers) as pool:
                readiness = pool.map(start, servers)
                points = _watch(admin, topic, servers, started, broker)
                # Consumption can start once the first server is up.
                ready_s = min(readiness)
            stored = _stored(servers[0].target, topic)
            dead_lettered = sum(admin.high(_dead_letter(topic.name)).values())
        finally:
            for server in servers:
                server.stop()
        found = _figures(topic, points, ready_s, consumers)
        found |= {"stored_samples": stored, "dead_lettered": dead_lettered}
        found["server_log_errors"] = _log_errors(servers)
    if stored != found["samples"] or dead_lettered:
        raise RuntimeError(
            f"{stored} of {found['samples']} samples stored, {dead_lettered} messages "
            f"dead-lettered: not a measure of topic to storage ({found})"
        )
    return found


def _figures(topic: _Topic, points: list[_Point], ready_s: float, consumers: int) -> dict[str, Any]:
    """The headline rate runs from readiness (the first server answers
    health checks) until the group has committed every message: it leaves out the
    servers' start-up and includes joining the group and the last flush.
    The steady rate, between the first commit and the last before the final
    one, leaves those out too; but it assumes each commit comes as long after
    the messages it covers were read, and a consumer's commits can come in
    bursts (``commits`` lists them), so it is shown beside the headline."""
    first, done = points[0], points[-1]
    last = points[-2] if len(points) >= 3 else done
    samples = topic.messages * SAMPLES_PER_MESSAGE
    window = last.at_s - first.at_s
    steady = (
        (last.messages - first.messages) * SAMPLES_PER_MESSAGE / window
        if last is not done
        else None
    )
    found: dict[str, Any] = {
        "consumers": consumers,
        "messages": topic.messages,
        "samples": samples,
        "topic_mb": round(topic.megabytes, 1),
        "produce_s": round(topic.produce_s, 2),
        "ready_s": round(ready_s, 2),
        "first_commit_s": round(first.at_s, 2),
        "done_s": round(done.at_s, 2),
        "samples_per_s": samples / (done.at_s - ready_s),
        "steady_samples_per_s": steady,  # None with fewer than three commits
        "samples_per_s_from_start": samples / done.at_s,
        "commits": [(round(p.at_s, 2), p.messages) for p in points],
    }
    found["servers_cpu_cores_from_start"] = done.servers_cpu_s / done.at_s
    if window > 0:
        found["servers_cpu_cores"] = (last.servers_cpu_s - first.servers_cpu_s) / window
        if last.broker_cpu_s is not None and first.broker_cpu_s is not None:
            found["broker_cpu_cores"] = (last.broker_cpu_s - first.broker_cpu_s) / window
    return found


def _stored(target: str, topic: _Topic) -> int:
    """Samples the server counts for the topic's apps, over their minutes."""
    start = topic.produced_ms - data.MINUTE_MS
    start -= start % data.MINUTE_MS
    end = topic.produced_ms - topic.produced_ms % data.MINUTE_MS + data.MINUTE_MS
    total = 0
    for app in topic.apps:
        query = {
            "app": app,
            "metric": data.METRIC,
            "start_ms": start,
            "end_ms": end,
            "step_ms": data.MINUTE_MS,
            "stats": ["count"],
        }
        total += counted(target, query)[0]
    return total


def _log_errors(servers: list[Child]) -> list[str]:
    lines = []
    for server in servers:
        tail = server.log_tail(200).splitlines()
        lines += [
            f"{server.name}: {line}" for line in tail if "ERROR" in line or "Traceback" in line
        ]
    return lines[:10]


def _profile(settings: Settings, messages: int) -> dict[str, Any]:
    """py-spy on one consumer while it reads a fresh topic (after start-up)."""
    assert settings.profiler is not None
    with _topic(settings, "profile", messages) as (admin, topic):
        (server,) = _servers(settings, "profile", topic.name, 1)
        with server:
            started = time.monotonic()
            return settings.profiler.during(
                "kafka-1-consumer",
                server,
                lambda: _watch(admin, topic, [server], started, None),
            )
