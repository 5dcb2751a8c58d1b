"""Kafka ingest end to end: ``metaas serve`` consumers in one group on the
local broker, a known set of samples produced to a topic, and stored counts
and sums compared exactly with what was produced, across a ``kill -9``, a
rebalance and a broker restart; invalid messages go to the dead-letter topic
and leave the stored data as it was."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from metaas.client import Client
from metaas.v1 import ingest_pb2
from tests.backends import kafka
from tests.backends.cassandra import drop_keyspace, url
from tests.support import ServerProcess, eventually

pytestmark = pytest.mark.e2e

MINUTE = 60_000
METRIC = "kafka.e2e"
PARTS = ("a", "b", "c")
APPS = tuple(f"app-{i:02d}" for i in range(24))
PARTITIONS = 6
ROUNDS = 36
ROUND_S = 0.45  # 36 rounds of 12 messages: 432 messages over about 16 s
KILL_ROUND = 10
RESTART_ROUND = 22

Totals = kafka.Totals


@pytest.fixture(params=["sqlite", "cassandra"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Storage both consumers share: one SQLite file, or a fresh keyspace."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}"
        return
    keyspace = f"metaas_kafka_{uuid.uuid4().hex[:12]}"
    yield url(keyspace)
    asyncio.run(drop_keyspace(keyspace))


@contextlib.contextmanager
def _stopped_after() -> Iterator[list[ServerProcess]]:
    """Servers appended to the list are stopped after the block."""
    servers: list[ServerProcess] = []
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def _consumer(
    data_dir: Path, storage: str, topic: str, group: str, dead_letter: str
) -> ServerProcess:
    return ServerProcess(
        data_dir,
        storage=storage,
        flush_interval_s=0.3,
        extra=(
            "--kafka-brokers",
            kafka.BOOTSTRAP,
            "--kafka-topic",
            topic,
            "--kafka-group",
            group,
            "--kafka-dead-letter-topic",
            dead_letter,
        ),
    )


def _samples(
    app: str, part: str, times: list[int], values: list[float]
) -> ingest_pb2.SeriesSamples:
    return ingest_pb2.SeriesSamples(
        app=app, metric=METRIC, labels={"part": part}, times_ms=times, values=values
    )


@dataclass(frozen=True)
class Plan:
    """The requests the producer sends, round by round, and the range their
    samples fall in. Values are multiples of 0.25 below 1000, so every sum is
    exact in float64 whatever order it is added in."""

    rounds: tuple[tuple[ingest_pb2.WriteRequest, ...], ...]
    start_ms: int
    end_ms: int

    def totals(self) -> Totals:
        return kafka.totals_of(r for requests in self.rounds for r in requests)


def _plan(seed: int, now_ms: int) -> Plan:
    rounds = kafka.planned_rounds(
        seed, now_ms, apps=APPS, parts=PARTS, metric=METRIC, rounds=ROUNDS
    )
    start = now_ms - now_ms % MINUTE - 10 * MINUTE
    return Plan(tuple(map(tuple, rounds)), start, now_ms - now_ms % MINUTE + MINUTE)


def _stream(
    publisher: kafka.Publisher, plan: Plan, reached: dict[int, threading.Event]
) -> list[kafka.Record]:
    """Produce the plan's rounds ROUND_S apart, setting ``reached[n]`` once
    round n is stored in the topic; return every message as stored."""
    stored: list[kafka.Record] = []
    began = time.monotonic()
    for number, requests in enumerate(plan.rounds):
        for request in requests:
            publisher.write(request)
        stored.extend(publisher.flush())
        if number in reached:
            reached[number].set()
        time.sleep(max(0.0, began + (number + 1) * ROUND_S - time.monotonic()))
    return stored


def _stored(client: Client, apps: tuple[str, ...], start_ms: int, end_ms: int) -> Totals:
    """Count and sum of every series of the apps over the whole range."""
    totals: Totals = {}
    for app in apps:
        result = client.query_range(
            app,
            METRIC,
            start_ms,
            end_ms,
            step_ms=end_ms - start_ms,
            stats=["count", "sum"],
            group_by=["part"],
        )
        for series in result.series:
            totals[(app, series.labels["part"])] = (
                int(sum(series.stats["count"])),
                sum(series.stats["sum"]),
            )
    return totals


def _partitions(server: ServerProcess) -> dict[int, int]:
    """The partitions the server consumes now, with their committed offsets."""
    with Client(server.target) as client:
        status = client.migration_status()
    return {p.partition: p.committed_offset for p in status.kafka_partitions}


def _health(server: ServerProcess) -> int:
    with grpc.insecure_channel(server.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2
        )
    return int(reply.status)


def _assert_spread(a: ServerProcess, b: ServerProcess) -> None:
    owned_a, owned_b = set(_partitions(a)), set(_partitions(b))
    assert owned_a, "the first consumer owns no partition"
    assert owned_b, "the second consumer owns no partition"
    assert not owned_a & owned_b, (owned_a, owned_b)
    assert owned_a | owned_b == set(range(PARTITIONS)), (owned_a, owned_b)


def _assert_committed_some(server: ServerProcess) -> None:
    owned = _partitions(server)
    assert any(offset > 0 for offset in owned.values()), owned


def _assert_not_serving(server: ServerProcess) -> None:
    assert _health(server) == health_pb2.HealthCheckResponse.NOT_SERVING


def _wait_round(reached: threading.Event, production: Future[list[kafka.Record]]) -> None:
    """Wait until production has reached a round; fail if it ended or failed first."""
    while not reached.wait(0.1):
        if production.done():
            production.result()
            raise AssertionError("production ended before reaching the round")


def test_every_sample_counts_once_across_kill_rebalance_and_broker_restart(
    tmp_path: Path, storage: str
) -> None:
    plan = _plan(16, time.time_ns() // 1_000_000)
    group = kafka.unique("metaas-e2e")
    dead_letter = kafka.unique("metaas-e2e-dead-letter")
    reached = {KILL_ROUND: threading.Event(), RESTART_ROUND: threading.Event()}
    with kafka.topic("metaas-e2e", PARTITIONS) as topic, _stopped_after() as servers:
        try:
            consumers = [
                _consumer(tmp_path / name, storage, topic, group, dead_letter) for name in "ab"
            ]
            for consumer in consumers:
                servers.append(consumer.start())
            a, b = consumers
            eventually(lambda: _assert_spread(a, b), timeout=30)
            publisher = kafka.Publisher(topic)
            with ThreadPoolExecutor(1) as pool:
                production = pool.submit(_stream, publisher, plan, reached)
                _wait_round(reached[KILL_ROUND], production)
                # Both have stored some of their partitions before one dies.
                eventually(lambda: _assert_committed_some(a), timeout=15)
                eventually(lambda: _assert_committed_some(b), timeout=15)
                b.kill()
                _wait_round(reached[RESTART_ROUND], production)
                b = _consumer(tmp_path / "b", storage, topic, group, dead_letter)
                servers.append(b.start())
                stored = production.result(60)
            assert len(stored) == sum(map(len, plan.rounds))
            assert sum(kafka.high_watermarks(topic).values()) == len(stored)

            with kafka.broker_stopped():
                for server in (a, b):
                    eventually(functools.partial(_assert_not_serving, server), timeout=30)
            for server in (a, b):
                server.wait_serving(timeout=60)
            kafka.wait_consumed(group, topic, timeout=90)

            want = plan.totals()
            for server in (a, b):
                with Client(server.target) as client:
                    assert _stored(client, APPS, plan.start_ms, plan.end_ms) == want
            assert kafka.consume_all(dead_letter) == []
        finally:
            kafka.delete_topics(dead_letter)


# The dead-letter test: messages on one partition, so valid ones after
# invalid ones show that consumption goes on past them.
DL_APPS = ("dl-a", "dl-b")
SECRET_VALUE = 4321.75  # a value of an invalid message, never to be logged


@dataclass(frozen=True)
class Sent:
    """A message of the mix. ``rejected_for`` is what the dead-letter error
    of an invalid message names (empty: any reason); None for a valid one."""

    key: bytes
    value: bytes
    timestamp_ms: int = 0
    rejected_for: str | None = None


def _request(*series: ingest_pb2.SeriesSamples) -> bytes:
    return ingest_pb2.WriteRequest(series=series).SerializeToString()


def _dead_letter_mix(now_ms: int) -> list[Sent]:
    hour_ago = now_ms - 60 * MINUTE
    recent = [now_ms - 2 * MINUTE, now_ms - 3 * MINUTE]

    def valid(app: str, part: str, times: list[int], values: list[float], ts: int = 0) -> Sent:
        return Sent(app.encode(), _request(_samples(app, part, times, values)), ts)

    return [
        valid("dl-a", "a", recent, [1.5, 2.25]),
        Sent(b"dl-a", b"not a protobuf", rejected_for=""),
        Sent(
            b"dl-a",
            _request(
                _samples("dl-a", "a", recent, [7.0, 8.0]), _samples("", "b", recent, [9.0, 10.0])
            ),
            rejected_for="series[1].app",
        ),
        valid("dl-b", "b", recent, [3.0, 0.75]),
        Sent(
            b"dl-b",
            _request(_samples("dl-b", "b", [*recent, now_ms], [1.0, math.nan, SECRET_VALUE])),
            rejected_for="series[0].values[1]",
        ),
        # Within minutes of the wall clock, but an hour after the message's
        # own timestamp, which is the "now" a message is judged by.
        Sent(
            b"dl-a",
            _request(_samples("dl-a", "c", recent, [5.0, 6.0])),
            timestamp_ms=hour_ago,
            rejected_for="series[0].times_ms[0]",
        ),
        # An hour-old message whose samples are older still: valid.
        valid("dl-a", "c", [hour_ago - MINUTE, hour_ago - 2 * MINUTE], [0.5, 4.0], hour_ago),
        valid("dl-b", "a", recent, [12.0, 13.25]),
    ]


def test_invalid_messages_go_to_the_dead_letter_topic_and_store_nothing(
    tmp_path: Path,
) -> None:
    now = time.time_ns() // 1_000_000
    mix = _dead_letter_mix(now)
    group = kafka.unique("metaas-e2e-dl")
    dead_letter = kafka.unique("metaas-e2e-dead-letter")
    with kafka.topic("metaas-e2e-dl", 1) as topic, _stopped_after() as servers:
        try:
            server = _consumer(
                tmp_path / "server", f"sqlite:///{tmp_path / 'db'}", topic, group, dead_letter
            )
            servers.append(server.start())
            publisher = kafka.Publisher(topic)
            for sent in mix:
                publisher.send(sent.key, sent.value, timestamp_ms=sent.timestamp_ms)
            stored = publisher.flush()
            kafka.wait_consumed(group, topic, timeout=60)

            want: Totals = {}
            for sent in mix:
                if sent.rejected_for is None:
                    for series in ingest_pb2.WriteRequest.FromString(sent.value).series:
                        kafka.add_totals(want, series)
            start = now - now % MINUTE - 62 * MINUTE
            end = now - now % MINUTE + MINUTE
            with Client(server.target) as client:
                assert _stored(client, DL_APPS, start, end) == want

            invalid = [
                (sent.rejected_for, sent, original)
                for sent, original in zip(mix, stored, strict=True)
                if sent.rejected_for is not None
            ]
            letters = eventually(
                functools.partial(_dead_letters, dead_letter, len(invalid)), timeout=15
            )
            assert letters.keys() == {sent.value for _, sent, _ in invalid}
            for reason, sent, original in invalid:
                letter = letters[sent.value]
                assert letter.value == sent.value
                assert letter.key == sent.key
                error = (letter.header("metaas-error") or b"").decode()
                assert error, letter
                assert reason in error, error
                assert letter.header("metaas-topic") == topic.encode()
                assert letter.header("metaas-partition") == str(original.partition).encode()
                assert letter.header("metaas-offset") == str(original.offset).encode()
            assert _health(server) == health_pb2.HealthCheckResponse.SERVING
            assert str(SECRET_VALUE) not in server.log()
        finally:
            kafka.delete_topics(dead_letter)


def _dead_letters(topic: str, expected: int) -> dict[bytes, kafka.Record]:
    """The dead-letter topic's messages by value, once it holds ``expected``."""
    letters = kafka.consume_all(topic)
    assert len(letters) == expected, letters
    return {letter.value: letter for letter in letters}
