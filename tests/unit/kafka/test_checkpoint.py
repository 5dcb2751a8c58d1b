"""A partition's checkpoint in the group's committed offset and metadata:
what is written is read back, anything else reads as no intents, and the
intents follow the flushes begun and stored."""

from __future__ import annotations

import pytest

from metaas.server.kafka.checkpoint import MAX_INTENTS, Checkpoint

# Kafka's default offset.metadata.max.bytes.
KAFKA_METADATA_LIMIT = 4096


@pytest.mark.parametrize(
    ("committed", "intents"),
    [(0, []), (120, [130]), (120, [130, 145, 146]), (2**62, [2**62 + 1, 2**63 - 1])],
)
def test_metadata_reads_back_as_the_checkpoint_written(committed: int, intents: list[int]) -> None:
    written = Checkpoint(committed, intents)
    assert Checkpoint.read(committed, written.metadata()) == Checkpoint(committed, intents)


def test_the_most_intents_kept_fit_kafkas_metadata_limit() -> None:
    largest = Checkpoint(
        2**63 - MAX_INTENTS - 1, [2**63 - MAX_INTENTS + i for i in range(MAX_INTENTS)]
    )
    assert len(largest.metadata().encode()) < KAFKA_METADATA_LIMIT
    assert Checkpoint.read(largest.committed or 0, largest.metadata()) == largest


def test_no_committed_offset_reads_as_none_and_keeps_the_intents() -> None:
    assert Checkpoint.read(-1, None) == Checkpoint(None, [])
    assert Checkpoint.read(-1001, "") == Checkpoint(None, [])  # OFFSET_INVALID
    assert Checkpoint.read(-1, Checkpoint(None, [0, 7]).metadata()) == Checkpoint(None, [0, 7])


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        "",
        "committed by another tool",
        "null",
        '"1"',
        "[130, 145]",
        "{}",
        '{"intents":[130]}',  # no version
        '{"v":0,"intents":[130]}',  # an older format
        '{"v":2,"intents":[130]}',  # a newer one
        '{"v":"1","intents":[130]}',
        '{"v":1}',
        '{"v":1,"intents":130}',
        '{"v":1,"intents":"130"}',
        '{"v":1,"intents":[null]}',
        '{"v":1,"intents":["later"]}',
        '{"v":1,"intents":{"e":130}}',
        '{"v":1,"intents":[130,145',  # cut short
        '{"v":1,"intents":[130,145]}}',
        '{"v":1,"intents":[NaN]}',
    ],
)
def test_metadata_this_module_did_not_write_reads_as_no_intents(metadata: str | None) -> None:
    assert Checkpoint.read(120, metadata) == Checkpoint(120, [])


def test_intents_at_or_below_the_committed_offset_are_dropped_and_the_rest_ordered() -> None:
    metadata = '{"v":1,"intents":[150,90,120,121,150,200]}'
    assert Checkpoint.read(120, metadata).intents == [121, 150, 200]
    assert Checkpoint.read(200, metadata).intents == []
    assert Checkpoint.read(-1, metadata).intents == [90, 120, 121, 150, 200]


def test_begin_records_each_new_flush_end_once_in_order() -> None:
    checkpoint = Checkpoint(100)
    checkpoint.begin(110)
    checkpoint.begin(125)
    checkpoint.begin(125)  # the same flush begun again (its first commit failed)
    checkpoint.begin(118)  # an end below the last one recorded is already covered
    assert checkpoint == Checkpoint(100, [110, 125])
    assert Checkpoint.read(100, checkpoint.metadata()).intents == [110, 125]


def test_stored_moves_the_committed_offset_up_and_clears_the_intents_it_covers() -> None:
    checkpoint = Checkpoint(100, [110, 125, 140])
    checkpoint.stored(110)
    assert checkpoint == Checkpoint(110, [125, 140])
    checkpoint.stored(140)
    assert checkpoint == Checkpoint(140, [])
    checkpoint.stored(125)  # a late answer never moves the offset back
    assert checkpoint == Checkpoint(140, [])


def test_stored_sets_the_first_committed_offset() -> None:
    checkpoint = Checkpoint(None, [5, 9])
    checkpoint.stored(5)
    assert checkpoint == Checkpoint(5, [9])
