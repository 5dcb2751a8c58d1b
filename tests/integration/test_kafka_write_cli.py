"""``metaas write --kafka-brokers`` on the local broker: the samples land in
the topic keyed by app, the summary says how many went where, and each
mistake or an unreachable broker is one line with its exit status."""

from __future__ import annotations

import os
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator

import pytest

from metaas.v1 import ingest_pb2
from tests.backends.kafka import BOOTSTRAP, consume_all, high_watermarks, topic
from tests.support import METAAS, free_port

NOW = time.time_ns() // 1_000_000
# (app, dyno) -> samples: three apps, the last with two series.
ROWS = {("shop", "web.1"): 30, ("blog", "web.1"): 7, ("cart", "web.1"): 12, ("cart", "web.2"): 5}
CSV = "app,metric,time_ms,value,dyno\n" + "".join(
    f"{app},router.latency_ms,{NOW - 60_000 + i},{i}.5,{dyno}\n"
    for (app, dyno), count in ROWS.items()
    for i in range(count)
)


@pytest.fixture
def fresh_topic() -> Iterator[str]:
    with topic("metaas-test-write-cli", 6) as name:
        yield name


def metaas(*args: str, stdin: str = CSV) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "METAAS_KAFKA_TOPIC"}
    return subprocess.run(
        [METAAS, "write", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def one_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]


def test_samples_go_to_the_topic_keyed_by_app(fresh_topic: str) -> None:
    result = metaas("--kafka-brokers", BOOTSTRAP, "--kafka-topic", fresh_topic, "--batch-size", "8")
    assert result.returncode == 0, result.stderr
    records = consume_all(fresh_topic)
    total = sum(ROWS.values())
    assert result.stdout == (
        f"produced {total} samples in {len(ROWS)} series to Kafka topic {fresh_topic} "
        f"({len(records)} messages)\n"
    )
    found: dict[tuple[str, str], list[int]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for record in records:
        request = ingest_pb2.WriteRequest.FromString(record.value)
        assert 0 < sum(len(s.times_ms) for s in request.series) <= 8  # --batch-size
        for s in request.series:
            assert record.key == s.app.encode()
            assert s.metric == "router.latency_ms"
            partitions[s.app].add(record.partition)
            found[s.app, s.labels["dyno"]] += [t - NOW + 60_000 for t in s.times_ms]
    assert found == {key: list(range(count)) for key, count in ROWS.items()}
    assert all(len(p) == 1 for p in partitions.values()), partitions


def test_an_unreachable_broker_exits_4_within_the_delivery_timeout() -> None:
    brokers = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = metaas("--kafka-brokers", brokers, "--kafka-topic", "nowhere")
    took = time.monotonic() - started
    line = one_line(result, 4)
    assert took < 30, took
    assert line.startswith(f"Error: Kafka at {brokers} (--kafka-brokers): ")
    assert "not delivered to topic nowhere: Local: Message timed out" in line
    assert line.endswith("; nothing was produced")
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--kafka-brokers", "localhost"], "'localhost' is not HOST:PORT"),
        (["--kafka-brokers", "127.0.0.1:99999"], "'127.0.0.1:99999' is not HOST:PORT"),
        (["--kafka-brokers", ""], "'' is not HOST:PORT"),
        (["--kafka-brokers", BOOTSTRAP, "--kafka-topic", "no spaces"], "is not a Kafka topic"),
        (["--kafka-topic", "metaas.other"], "--kafka-topic needs --kafka-brokers"),
    ],
)
def test_a_kafka_flag_it_cannot_use_is_one_line_and_exit_2(args: list[str], said: str) -> None:
    assert said in one_line(metaas(*args), 2)


def test_bad_lines_are_refused_before_anything_is_produced(fresh_topic: str) -> None:
    bad = CSV + "shop,router.latency_ms,not-a-time,1.5,web.1\n"
    line = one_line(
        metaas("--kafka-brokers", BOOTSTRAP, "--kafka-topic", fresh_topic, stdin=bad), 2
    )
    assert "nothing was written" in line
    assert sum(high_watermarks(fresh_topic).values()) == 0
