"""KafkaWriter on the local broker: messages of one app each, keyed by the
app, on one partition in the order written, bounded, zstd-compressed,
delivered by close, and failures told with their count and cause."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import ConfigResource, ResourceType

from metaas.client import Series
from metaas.client.kafka import (
    PRODUCER_DEFAULTS,
    KafkaWriteError,
    KafkaWriter,
    MessageLimits,
)
from metaas.server.config import LimitsConfig
from metaas.v1 import ingest_pb2
from tests.backends.kafka import BOOTSTRAP, TIMEOUT_S, Record, admin, consume_all, topic
from tests.support import ROOT, free_port

NOW = time.time_ns() // 1_000_000
PARTITIONS = 6
# Record batch attributes: the low three bits are the compression codec.
_ZSTD = 4


@pytest.fixture
def fresh_topic() -> Iterator[str]:
    with topic("metaas-test-writer", PARTITIONS) as name:
        yield name


def samples(count: int, start: int = 0) -> tuple[list[int], list[float]]:
    """Times from a minute ago, each value its time's offset from there."""
    offsets = range(start, start + count)
    return [NOW - 60_000 + i for i in offsets], [float(i) for i in offsets]


def parsed(record: Record) -> ingest_pb2.WriteRequest:
    # Raises DecodeError for bytes that are not a WriteRequest.
    request = ingest_pb2.WriteRequest.FromString(record.value)
    assert request.series
    return request


def sample_count(record: Record) -> int:
    return sum(len(s.times_ms) for s in parsed(record).series)


def test_each_app_goes_in_order_to_one_partition_in_messages_of_its_own(fresh_topic: str) -> None:
    apps = [f"app-{i}" for i in range(12)]
    written: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    limits = MessageLimits(max_samples=40)
    with KafkaWriter(BOOTSTRAP, fresh_topic, limits=limits) as writer:
        # Three writes, each of every app's three series, interleaved.
        for step in range(3):
            batch = []
            for app in apps:
                for dyno in ("web.1", "web.2", "web.3"):
                    times, values = samples(25, start=step * 25)
                    batch.append(Series(app, "router.latency_ms", times, values, {"dyno": dyno}))
                    written[app, "router.latency_ms", dyno] += times
            assert writer.write(batch) == len(apps) * 3 * 25
    records = consume_all(fresh_topic)

    total = len(apps) * 3 * 3 * 25
    assert sum(sample_count(r) for r in records) == total
    assert writer.delivered_samples == total
    assert writer.delivered_messages == len(records)
    partitions: dict[bytes, set[int]] = defaultdict(set)
    read: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for record in records:  # in offset order within each partition
        request = parsed(record)
        assert {s.app for s in request.series} == {record.key.decode() if record.key else None}
        assert 0 < sum(len(s.times_ms) for s in request.series) <= limits.max_samples
        partitions[record.key or b""].add(record.partition)
        for s in request.series:
            assert list(s.values) == [float(t - NOW + 60_000) for t in s.times_ms]
            read[s.app, s.metric, s.labels["dyno"]] += list(s.times_ms)
    assert set(partitions) == {app.encode() for app in apps}
    assert all(len(found) == 1 for found in partitions.values()), partitions
    # Apps spread over partitions: they are keyed, not all sent to one.
    assert len({p for found in partitions.values() for p in found}) > 1
    assert read == written


def test_a_message_stays_within_each_limit(fresh_topic: str) -> None:
    labels = {"dyno": "web.1", "region": "x" * 200}
    by_samples = [Series("samples", "m", *samples(250))]
    by_series = [Series("series", f"m{i}", *samples(1)) for i in range(7)]
    by_bytes = [Series("bytes", "m", *samples(500), labels)]
    limits = MessageLimits(max_series=3, max_samples=100, max_bytes=2_000)
    with KafkaWriter(BOOTSTRAP, fresh_topic, limits=limits) as writer:
        writer.write(by_samples + by_series + by_bytes)
    records = consume_all(fresh_topic)

    per_app: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        per_app[parsed(record).series[0].app].append(record)
    assert [sample_count(r) for r in per_app["samples"]] == [100, 100, 50]
    assert [len(parsed(r).series) for r in per_app["series"]] == [3, 3, 1]
    sizes = [len(r.value) for r in per_app["bytes"]]
    assert all(size <= limits.max_bytes for size in sizes), sizes
    assert sum(sample_count(r) for r in per_app["bytes"]) == 500
    # Packed close to the bound, not a sample or a series at a time.
    assert len(sizes) <= 500 * 18 // (limits.max_bytes // 2), sizes


def test_the_default_limits_stay_well_under_the_servers(fresh_topic: str) -> None:
    server = LimitsConfig()
    limits = MessageLimits()
    assert limits.max_series <= server.max_series_per_request // 2
    assert limits.max_samples <= server.max_samples_per_request // 2
    assert limits.max_bytes <= server.max_request_bytes // 2
    many = [Series("wide", "m", *samples(30), {"dyno": f"web.{i}"}) for i in range(2_500)]
    long = [Series("long", "m", *samples(120_000))]
    with KafkaWriter(BOOTSTRAP, fresh_topic) as writer:
        writer.write(many + long)
    records = consume_all(fresh_topic)

    assert sum(sample_count(r) for r in records) == 2_500 * 30 + 120_000
    for record in records:
        request = parsed(record)
        assert len(request.series) <= limits.max_series
        assert sum(len(s.times_ms) for s in request.series) <= limits.max_samples
        assert request.ByteSize() <= limits.max_bytes


def test_series_whose_times_and_values_differ_go_whole(fresh_topic: str) -> None:
    """The consumer refuses such a message as Write refuses the request;
    split, a part of it could pass."""
    times, values = samples(10)
    odd = Series("odd", "m", times, values[:9])
    empty = Series("odd", "empty", [], [])
    with KafkaWriter(BOOTSTRAP, fresh_topic, limits=MessageLimits(max_samples=3)) as writer:
        writer.write([odd, empty])
    found = [[(s.metric, len(s.times_ms), len(s.values)) for s in parsed(r).series]
             for r in consume_all(fresh_topic)]  # fmt: skip
    assert found == [[("m", 10, 9)], [("empty", 0, 0)]]


def test_messages_are_compressed_with_zstd(fresh_topic: str) -> None:
    assert PRODUCER_DEFAULTS["compression.type"] == "zstd"
    with KafkaWriter(BOOTSTRAP, fresh_topic) as writer:
        writer.write([Series(f"app-{i}", "m", *samples(1_000)) for i in range(20)])
    codecs = batch_codecs(fresh_topic)
    assert codecs, "no record batch found in the topic's log segments"
    assert set(codecs) == {_ZSTD}


def batch_codecs(name: str) -> list[int]:
    """The compression codec of every record batch the broker stored for the
    topic, read from its log segments (the broker keeps the producer's
    compression): what a consumer cannot see, since it gets the records
    decompressed."""
    resource = ConfigResource(ResourceType.BROKER, "1")
    config = admin().describe_configs([resource])[resource].result(TIMEOUT_S)
    codecs = []
    for log_dir in config["log.dirs"].value.split(","):
        for segment in Path(log_dir).glob(f"{name}-*/*.log"):
            data = segment.read_bytes()
            position = 0
            # base offset (8), length (4), leader epoch (4), magic (1), crc (4), attributes (2)
            while position + 23 <= len(data):
                (length,) = struct.unpack_from(">i", data, position + 8)
                (attributes,) = struct.unpack_from(">h", data, position + 21)
                codecs.append(attributes & 0x7)
                position += 12 + length
    return codecs


def test_close_delivers_what_is_still_lingering(fresh_topic: str) -> None:
    # Without close, the messages would wait in the producer for a minute.
    writer = KafkaWriter(BOOTSTRAP, fresh_topic, config={"linger.ms": 60_000})
    queued = writer.write([Series("shop", "m", *samples(100))])
    assert writer.delivered_samples == 0
    started = time.monotonic()
    writer.close()
    assert time.monotonic() - started < 30
    assert writer.delivered_samples == queued == 100
    assert sum(sample_count(r) for r in consume_all(fresh_topic)) == 100
    with pytest.raises(RuntimeError, match="closed"):
        writer.write([Series("shop", "m", *samples(1))])


def test_undelivered_messages_are_counted_with_their_cause() -> None:
    port = free_port()
    writer = KafkaWriter(f"127.0.0.1:{port}", "nowhere", delivery_timeout=2)
    writer.write([Series("a", "m", *samples(5)), Series("b", "m", *samples(7))])
    started = time.monotonic()
    with pytest.raises(KafkaWriteError) as raised:
        writer.flush()
    assert time.monotonic() - started < 15
    error = raised.value
    assert (error.messages, error.samples, error.is_retryable) == (2, 12, True)
    assert str(error).startswith("2 messages (12 samples) not delivered to topic nowhere: ")
    assert "Message timed out" in str(error)
    assert f"127.0.0.1:{port}" in str(error)  # the broker error says which address failed
    # Each failure is reported once: closing afterwards has nothing new to tell.
    writer.close()


def test_a_message_kafka_cannot_hold_is_refused_for_good(fresh_topic: str) -> None:
    huge = MessageLimits(max_samples=1_000_000, max_bytes=64 * 1024 * 1024)
    writer = KafkaWriter(BOOTSTRAP, fresh_topic, limits=huge)
    with pytest.raises(KafkaWriteError) as raised:
        writer.write([Series("shop", "m", *samples(200_000))])
    writer.close()
    assert raised.value.is_retryable is False
    assert (raised.value.messages, raised.value.samples) == (1, 200_000)
    assert "too large" in str(raised.value).lower()


def test_the_client_readme_example_produces_to_the_topic(fresh_topic: str) -> None:
    # A ```py fence: the client's README test runs ```python blocks against
    # a scripted gRPC server, which this example does not call.
    readme = (ROOT / "client" / "README.md").read_text()
    match = re.search(r"<!-- needs a Kafka broker: [^\n]*-->\n```py\n(.*?)```", readme, re.DOTALL)
    assert match, "client/README.md has no Kafka example"
    example = match[1]
    assert '"metaas.observations"' in example
    code = compile(example.replace('"metaas.observations"', repr(fresh_topic)), "README", "exec")
    exec(code, {})  # noqa: S102  # the README's example, run as written
    (record,) = consume_all(fresh_topic)
    assert record.key == b"shop"
    assert [s.labels["dyno"] for s in parsed(record).series] == ["web.1"]


def test_limits_and_timeouts_are_checked() -> None:
    with pytest.raises(ValueError, match=r"MessageLimits.max_samples is 0: give 1 or more"):
        MessageLimits(max_samples=0)
    with pytest.raises(ValueError, match="delivery_timeout is 0: give seconds above 0"):
        KafkaWriter(BOOTSTRAP, delivery_timeout=0)


def test_the_grpc_client_does_not_import_confluent_kafka() -> None:
    code = (
        "import sys, metaas.client\n"
        "assert 'confluent_kafka' not in sys.modules, 'confluent_kafka imported'\n"
        "import metaas.client.kafka\n"
        "assert 'confluent_kafka' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_without_confluent_kafka_the_import_says_which_extra_to_install() -> None:
    # None in sys.modules makes `import confluent_kafka` fail as if absent.
    code = (
        "import sys\n"
        "sys.modules['confluent_kafka'] = None\n"
        "import metaas.client\n"
        "import metaas.client.kafka\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert (
        "ImportError: metaas.client.kafka needs confluent-kafka: install metaas-client[kafka]"
        in done.stderr
    )
