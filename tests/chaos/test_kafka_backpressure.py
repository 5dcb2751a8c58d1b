"""Back-pressure of the Kafka ingest: while its only backend is cut off,
the work waiting to be stored reaches --max-aggregate-bytes and the consumer
pauses its partitions instead of dropping anything; once the backend is
back it resumes, and every message is stored exactly once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from metaas.client import Client
from metaas.server.storage import StorageContext, open_storage
from metaas.v1 import ingest_pb2, migration_pb2
from tests.backends import dynamodb, kafka
from tests.faults import FaultProxy
from tests.support import ServerProcess, eventually

MINUTE = 60_000
METRIC = "kafka.backpressure"
APPS = tuple(f"pressed-{i:02d}" for i in range(12))
SERIES = 20  # per app and message: many aggregates, so the bound is reached soon
# The smallest bound the server accepts: a few dozen aggregates.
MAX_AGGREGATE_BYTES = 65_536


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    """The DynamoDB emulator behind a proxy that can cut it off."""
    made = FaultProxy("127.0.0.1", 8000)
    yield made
    made.close()


def _request(app: str, number: int, now_ms: int) -> ingest_pb2.WriteRequest:
    """One message: each of the app's series gets the value ``number`` at
    two times within the last minutes (exact sums in float64)."""
    return ingest_pb2.WriteRequest(
        series=[
            ingest_pb2.SeriesSamples(
                app=app,
                metric=METRIC,
                labels={"series": str(s)},
                times_ms=[now_ms - (number % 5) * MINUTE, now_ms - s * 1000],
                values=[float(number), float(number)],
            )
            for s in range(SERIES)
        ]
    )


def _status(server: ServerProcess) -> migration_pb2.GetMigrationStatusResponse:
    with Client(server.target) as client:
        return client.migration_status()


def _paused(server: ServerProcess) -> list[int]:
    return [p.partition for p in _status(server).kafka_partitions if p.paused]


def _some_paused(server: ServerProcess) -> list[int]:
    paused = _paused(server)
    assert paused, "no partition paused yet"
    return paused


def _none_paused(server: ServerProcess) -> None:
    assert not _paused(server)


async def _stored(url: str, start_ms: int, end_ms: int) -> tuple[int, float]:
    storage = await open_storage(url, StorageContext(30 * 86_400_000))
    try:
        count, total = 0, 0.0
        for app in APPS:
            for partial in await storage.read_partials(app, METRIC, start_ms, end_ms):
                count += partial.distribution.count
                total += partial.distribution.sum
        return count, total
    finally:
        await storage.close()


def test_a_consumer_pauses_while_storage_is_behind_and_resumes_losing_nothing(
    tmp_path: Path, proxy: FaultProxy, figures: dict[str, object]
) -> None:
    now = time.time_ns() // 1_000_000
    dynamodb.use_test_credentials()
    table_url = asyncio.run(dynamodb.new_table("kafka-backpressure"))
    table = dynamodb.table_of(table_url)
    url = (
        f"dynamodb://{table}?endpoint=http://{proxy.address}&region=us-east-1"
        "&connect_timeout_s=1&read_timeout_s=2"
    )
    sent = 0
    with kafka.topic("metaas-backpressure", 6) as topic:
        server = ServerProcess(
            tmp_path / "server",
            storage=url,
            flush_interval_s=0.3,
            extra=(
                "--max-aggregate-bytes",
                str(MAX_AGGREGATE_BYTES),
                "--kafka-brokers",
                kafka.BOOTSTRAP,
                "--kafka-topic",
                topic,
                "--kafka-group",
                kafka.unique("metaas-backpressure"),
                "--kafka-dead-letter-topic",
                kafka.unique("metaas-backpressure-dead-letter"),
            ),
            env=dynamodb.CREDENTIALS,
        )
        publisher = kafka.Publisher(topic)
        try:
            server.start()
            proxy.outage()
            for number in range(1, 11):
                for app in APPS:
                    publisher.write(_request(app, number, now))
            stored = publisher.flush()
            sent = len(stored)
            paused = eventually(lambda: _some_paused(server), timeout=30)
            held_at = kafka.high_watermarks(topic)
            time.sleep(2)  # paused, it stays paused: nothing is dropped meanwhile
            assert _paused(server), "resumed while the backend was still cut off"
            assert server.process is not None
            assert server.process.poll() is None  # alive, not crashed by the bound
            assert sum(kafka.committed_offsets(server_group(server), topic).values()) < sent
            proxy.heal()
            healed = time.monotonic()
            kafka.wait_consumed(server_group(server), topic, timeout=60)
            caught_up_s = time.monotonic() - healed
            eventually(lambda: _none_paused(server), timeout=15)
        finally:
            server.stop()
    count, total = asyncio.run(_stored(table_url, now - 10 * MINUTE, now + MINUTE))
    per_message = SERIES * 2
    assert count == sent * per_message
    assert total == sum(2.0 * number * SERIES * len(APPS) for number in range(1, 11))
    figures.update(
        {
            "messages produced": sent,
            "partitions paused in the outage": len(paused),
            "high watermarks when paused": sum(held_at.values()),
            "catch-up after the backend returned (s)": round(caught_up_s, 1),
        }
    )


def server_group(server: ServerProcess) -> str:
    return server.args[server.args.index("--kafka-group") + 1]
