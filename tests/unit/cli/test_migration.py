"""`metaas migration status` as people read it: the Kafka partitions a
server consumes, with their lag, and nothing about Kafka when it consumes none."""

from __future__ import annotations

from metaas.server.cli.migration import _status_lines
from metaas.v1 import migration_pb2


def _status(*partitions: migration_pb2.KafkaPartition) -> migration_pb2.GetMigrationStatusResponse:
    return migration_pb2.GetMigrationStatusResponse(
        old_backend="sqlite", window_seconds=300, kafka_partitions=partitions
    )


def test_the_consumed_partitions_are_listed_with_their_lag_and_pause() -> None:
    lines = _status_lines(
        _status(
            migration_pb2.KafkaPartition(
                topic="obs", partition=0, committed_offset=90, end_offset=100, lag=10
            ),
            migration_pb2.KafkaPartition(
                topic="obs", partition=3, committed_offset=7, end_offset=7, lag=0, paused=True
            ),
        ),
        [],
    )
    at = lines.index("kafka partitions (2, lag 10 messages):")
    header, first, second = (" ".join(line.split()) for line in lines[at + 1 : at + 4])
    assert header == "topic partition committed end lag"
    assert first == "obs 0 90 100 10"
    assert second == "obs 3 7 7 0 paused"


def test_a_server_consuming_no_kafka_says_nothing_of_it() -> None:
    assert not any("kafka" in line for line in _status_lines(_status(), []))
