"""Kafka ingest during a migration's dual writes with the new backend cut
off: offsets stay uncommitted while a flush is stored on one backend only,
a ``kill -9`` in the outage replays flushes the old backend already holds,
and once the backend is back every message is counted exactly once on each
backend, read from each directly."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from metaas.client import Client
from metaas.server.storage import StorageContext, open_storage
from metaas.v1 import ingest_pb2, migration_pb2
from tests.backends import dynamodb, kafka
from tests.faults import FaultProxy
from tests.migration.support import write_flags
from tests.support import ServerProcess, eventually

MINUTE = 60_000
METRIC = "kafka.outage"
PARTS = ("a", "b", "c")
APPS = tuple(f"outage-{i:02d}" for i in range(24))  # keyed onto all six partitions
PARTITIONS = 6
ROUNDS = 25
ROUND_S = 0.4  # 25 rounds of one message for each of half the apps: 300 over 10 s
OUTAGE_ROUND = 5
KILL_ROUND = 14

Totals = kafka.Totals


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    """The DynamoDB emulator behind a proxy that can cut it off."""
    made = FaultProxy("127.0.0.1", 8000)
    yield made
    made.close()


def _plan(seed: int, now_ms: int) -> list[list[ingest_pb2.WriteRequest]]:
    return kafka.planned_rounds(seed, now_ms, apps=APPS, parts=PARTS, metric=METRIC, rounds=ROUNDS)


def _stream(
    publisher: kafka.Publisher,
    rounds: list[list[ingest_pb2.WriteRequest]],
    reached: dict[int, threading.Event],
) -> list[kafka.Record]:
    """Produce the rounds ROUND_S apart, setting ``reached[n]`` once round n
    is stored in the topic; return every message as stored."""
    stored: list[kafka.Record] = []
    began = time.monotonic()
    for number, requests in enumerate(rounds):
        for request in requests:
            publisher.write(request)
        stored.extend(publisher.flush())
        if number in reached:
            reached[number].set()
        time.sleep(max(0.0, began + (number + 1) * ROUND_S - time.monotonic()))
    return stored


def _wait_round(reached: threading.Event, production: Future[list[kafka.Record]]) -> None:
    """Wait until production has reached a round; fail if it ended or failed first."""
    while not reached.wait(0.1):
        if production.done():
            production.result()
            raise AssertionError("production ended before reaching the round")


async def _read_totals(url: str, start_ms: int, end_ms: int) -> Totals:
    """Count and sum per series of the apps as one backend stores them: its
    minute partials from every writer, added up."""
    storage = await open_storage(url, StorageContext(30 * 86_400_000))
    totals: Totals = {}
    try:
        for app in APPS:
            for partial in await storage.read_partials(app, METRIC, start_ms, end_ms):
                key = (app, dict(partial.series.labels)["part"])
                count, total = totals.get(key, (0, 0.0))
                totals[key] = (count + partial.distribution.count, total + partial.distribution.sum)
    finally:
        await storage.close()
    return totals


def _status(server: ServerProcess) -> migration_pb2.GetMigrationStatusResponse:
    with Client(server.target) as client:
        return client.migration_status()


def _assert_owns_all(server: ServerProcess) -> None:
    owned = {p.partition for p in _status(server).kafka_partitions}
    assert owned == set(range(PARTITIONS)), owned


def _assert_committed_some(group: str, topic: str) -> None:
    committed = kafka.committed_offsets(group, topic)
    assert any(offset > 0 for offset in committed.values()), committed


def _assert_committed_within(group: str, topic: str, bound: dict[int, int]) -> dict[int, int]:
    """No partition's committed offset is past ``bound``: what came after it
    is not stored on the new backend, so it must not count as consumed."""
    committed = kafka.committed_offsets(group, topic)
    assert all(committed[p] <= end for p, end in bound.items()), (committed, bound)
    return committed


def _held_back(server: ServerProcess, more_than: int) -> int:
    """The server reports the new backend failing and a Kafka lag above
    ``more_than``; returns the lag."""
    status = _status(server)
    assert any(line.startswith("backend new") for line in status.ingest_problems), (
        status.ingest_problems
    )
    lag = sum(p.lag for p in status.kafka_partitions)
    assert lag > more_than, (lag, list(status.kafka_partitions))
    return lag


def test_every_message_counts_once_on_both_backends_across_an_outage_and_a_kill(
    tmp_path: Path, proxy: FaultProxy, figures: dict[str, object]
) -> None:
    now = time.time_ns() // 1_000_000
    start_ms, end_ms = now - now % MINUTE - 10 * MINUTE, now - now % MINUTE + MINUTE
    rounds = _plan(16, now)
    dynamodb.use_test_credentials()
    table_url = asyncio.run(dynamodb.new_table("kafka-outage"))
    table = table_url.split("?")[0].removeprefix("dynamodb://")
    old_url = f"sqlite:///{tmp_path / 'old.db'}"
    new_url = (
        f"dynamodb://{table}?endpoint=http://{proxy.address}&region=us-east-1"
        "&connect_timeout_s=1&read_timeout_s=2"
    )
    flags = tmp_path / "flags.json"
    write_flags(flags, dict.fromkeys(APPS, "dualwrite"))
    group = kafka.unique("metaas-outage")
    dead_letter = kafka.unique("metaas-outage-dead-letter")
    reached = {OUTAGE_ROUND: threading.Event(), KILL_ROUND: threading.Event()}

    with kafka.topic("metaas-outage", PARTITIONS) as topic:

        def consumer() -> ServerProcess:
            return ServerProcess(
                tmp_path / "server",
                storage=old_url,
                flush_interval_s=0.3,
                extra=(
                    "--migration-target",
                    new_url,
                    "--flags",
                    str(flags),
                    "--kafka-brokers",
                    kafka.BOOTSTRAP,
                    "--kafka-topic",
                    topic,
                    "--kafka-group",
                    group,
                    "--kafka-dead-letter-topic",
                    dead_letter,
                ),
                env=dynamodb.CREDENTIALS,
            )

        servers = [consumer()]
        try:
            server = servers[0].start()
            eventually(lambda: _assert_owns_all(server), timeout=30)
            publisher = kafka.Publisher(topic)
            with ThreadPoolExecutor(1) as pool:
                production = pool.submit(_stream, publisher, rounds, reached)
                _wait_round(reached[OUTAGE_ROUND], production)
                # Flushes reach both backends before the cut.
                eventually(lambda: _assert_committed_some(group, topic), timeout=15)
                proxy.outage()
                time.sleep(0.5)  # the proxy has dropped its connections
                # Every message from here on is produced after the cut.
                at_cut = kafka.high_watermarks(topic)
                lag_seen = eventually(lambda: _held_back(server, 0), timeout=15)
                _wait_round(reached[KILL_ROUND], production)
                eventually(lambda: _held_back(server, lag_seen), timeout=15)
                _assert_committed_within(group, topic, at_cut)
                server.kill()

                # Flushes the old backend stored in the outage are not
                # committed: the next owner replays them.
                old_at_kill = asyncio.run(_read_totals(old_url, start_ms, end_ms))
                new_at_kill = asyncio.run(_read_totals(table_url, start_ms, end_ms))
                stored_old = sum(count for count, _ in old_at_kill.values())
                stored_new = sum(count for count, _ in new_at_kill.values())
                assert stored_old > stored_new > 0, (stored_old, stored_new)

                # A server cannot start while its migration target is
                # unreachable (it checks the table first), so the backend
                # returns for the start only and is cut again before the
                # group, waiting out the killed member's session, hands the
                # restarted server its partitions: it replays them in the
                # outage.
                proxy.heal()
                earlier_log = len(server.log())
                servers.append(consumer())
                server = servers[-1].start()
                proxy.outage()
                time.sleep(0.5)
                at_second_cut = kafka.high_watermarks(topic)
                eventually(lambda: _assert_owns_all(server), timeout=30)
                stored = production.result(60)
            assert len(stored) == sum(map(len, rounds))
            ends = kafka.high_watermarks(topic)
            assert sum(ends.values()) == len(stored)
            assert all(ends.values()), ends  # every partition has its share
            eventually(lambda: _held_back(server, 0), timeout=15)
            assert "replaying to flush ends" in server.log()[earlier_log:]
            _assert_committed_within(group, topic, at_second_cut)
            healed = time.monotonic()
            proxy.heal()
            kafka.wait_consumed(group, topic, timeout=60)
            catch_up_s = time.monotonic() - healed

            want = kafka.totals_of(r for requests in rounds for r in requests)
            assert asyncio.run(_read_totals(old_url, start_ms, end_ms)) == want
            assert asyncio.run(_read_totals(table_url, start_ms, end_ms)) == want
            assert kafka.consume_all(dead_letter) == []
        finally:
            for process in servers:
                process.stop()
            kafka.delete_topics(dead_letter)
    figures.update(
        {
            "faults injected": "new backend cut off in dual writes, kill -9 in the outage",
            "messages produced": len(stored),
            "samples stored on the old backend before the kill": stored_old,
            "samples stored on the new backend before the kill": stored_new,
            "catch-up after the backend returned (s)": round(catch_up_s, 1),
        }
    )
