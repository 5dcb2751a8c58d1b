"""What a consumer holds for a partition: duplicates are dropped, a replay
ends its flushes exactly at the recorded intents, and periodic flushes end
at the next offset once anything new was consumed."""

from __future__ import annotations

import numpy as np

from metaas.server.ingest.aggregator import PendingPartial
from metaas.server.ingest.records import SeriesBatch
from metaas.server.kafka.checkpoint import Checkpoint
from metaas.server.kafka.partition import Partition, writer_of
from metaas.server.model import Resolution, SeriesKey
from tests.unit.conftest import START

SERIES = SeriesKey.of("a", "m")


def partition(checkpoint: Checkpoint) -> Partition:
    return Partition("observations", 3, checkpoint, hot_minutes=1, views=None)


def samples(offset: int) -> list[SeriesBatch]:
    """One sample whose value is its offset, so a flush tells which it holds."""
    return [SeriesBatch(SERIES, np.array([START], np.int64), np.array([offset], np.float64))]


def held(pending: list[PendingPartial]) -> tuple[float, int]:
    """The sum and count of the minutes taken for a flush."""
    minutes = [p.distribution for p in pending if p.resolution is Resolution.MINUTE]
    return sum(d.sum for d in minutes), sum(d.count for d in minutes)


def consume(p: Partition, offsets: range | list[int]) -> list[tuple[int, float, int]]:
    """Apply ``offsets`` as the consumer does, flushing at each replayed end
    before and after applying; returns each flush's end, the sum of the
    offsets it holds and how many."""
    flushes = []

    def flush(end: int) -> None:
        total, count = held(p.take(end))
        flushes.append((end, total, count))

    for offset in offsets:
        if p.is_duplicate(offset):
            continue
        while (end := p.boundary_before(offset)) is not None:
            flush(end)
        p.apply(offset, samples(offset))
        if (end := p.boundary_reached()) is not None:
            flush(end)
    return flushes


def test_the_writer_is_the_partition_whoever_owns_it() -> None:
    assert writer_of("observations", 3) == "kafka/observations/3"
    assert partition(Checkpoint(10)).writer == "kafka/observations/3"


def test_offsets_below_the_next_one_are_duplicates() -> None:
    p = partition(Checkpoint(10))
    assert p.is_duplicate(9)
    assert not p.is_duplicate(10)
    p.apply(10, samples(10))
    p.apply(11, None)  # an invalid message counts as consumed too
    assert [p.is_duplicate(o) for o in (10, 11, 12)] == [True, True, False]
    assert consume(p, [5, 10, 11]) == []
    assert held(p.take(12)) == (10.0, 1)


def test_a_replay_flushes_exactly_at_the_recorded_ends_in_order() -> None:
    p = partition(Checkpoint(10, [13, 15]))
    assert consume(p, range(10, 18)) == [(13, 10 + 11 + 12, 3), (15, 13 + 14, 2)]
    assert p.replay == []
    assert p.in_flight == {13, 15}
    assert p.flush_end() == 18  # periodic flushes take over: 15, 16, 17


def test_a_replay_redelivered_from_the_start_still_ends_at_the_recorded_ends() -> None:
    p = partition(Checkpoint(10, [13, 15]))
    assert consume(p, [10, 11, 10, 11, 12, 13, 12, 14]) == [(13, 33, 3), (15, 27, 2)]


def test_replayed_ends_passed_over_are_flushed_before_the_first_offset_beyond_them() -> None:
    """Offsets below the intents may be gone (the topic's retention): the
    flushes still end at each intent, in order, before anything later."""
    p = partition(Checkpoint(10, [13, 15]))
    assert p.boundary_before(12) is None
    assert p.boundary_before(13) == 13
    flushed = []
    while (end := p.boundary_before(16)) is not None:
        p.take(end)
        flushed.append(end)
    assert flushed == [13, 15]
    assert p.flushed_to == 15
    p.apply(16, samples(16))
    assert p.boundary_reached() is None
    assert p.flush_end() == 17


def test_no_periodic_flush_while_a_replayed_end_is_pending() -> None:
    p = partition(Checkpoint(10, [13]))
    assert p.flush_end() is None
    consume(p, [10, 11])
    assert p.flush_end() is None  # the replay must reach 13 first
    consume(p, [12])
    assert p.flush_end() is None  # flushed at 13, nothing consumed since
    consume(p, [13])
    assert p.flush_end() == 14


def test_no_periodic_flush_when_nothing_new_was_consumed() -> None:
    p = partition(Checkpoint(10))
    assert p.flush_end() is None
    consume(p, [10, 11])
    assert p.flush_end() == 12
    p.take(12)
    assert p.flush_end() is None
    consume(p, [11])  # a duplicate is nothing new
    assert p.flush_end() is None


def test_a_fresh_group_starts_at_the_first_offset_applied() -> None:
    p = partition(Checkpoint.read(-1, None))
    assert p.flush_end() is None
    assert not p.is_duplicate(0)
    consume(p, [42, 43])
    assert p.checkpoint.committed == 42  # nothing below it is this group's
    assert p.flush_end() == 44
    assert p.is_duplicate(43)
    p.end_offset = 50
    assert p.lag == 8


def test_stored_commits_a_flush_and_clears_its_intent() -> None:
    p = partition(Checkpoint(10))
    consume(p, [10, 11])
    p.checkpoint.begin(12)
    p.take(12)
    consume(p, [12])
    p.checkpoint.begin(13)
    p.take(13)
    assert p.in_flight == {12, 13}
    p.stored(12)
    assert p.in_flight == {13}
    assert p.checkpoint == Checkpoint(12, [13])


def test_the_checkpoint_never_passes_a_flush_not_stored_yet() -> None:
    # Flushes are reported stored out of order: one holding only dead
    # letters at once, or one whose apps go to a backend that is faster.
    p = partition(Checkpoint(100))
    for end in (110, 112, 115):
        p.apply(end - 1, samples(end - 1))
        p.take(end)
    p.stored(112)
    assert p.checkpoint.committed == 100
    p.stored(110)
    assert p.checkpoint.committed == 112
    p.stored(115)
    assert p.checkpoint.committed == 115
    assert p.in_flight == set()


def test_a_flush_of_an_earlier_owner_does_not_move_the_checkpoint() -> None:
    # The partition came back to this replica while a flush of its previous
    # ownership (withdrawn, but already being written) was finishing.
    p = partition(Checkpoint(100))
    p.apply(104, samples(104))
    p.take(105)
    p.stored(130)
    assert p.checkpoint.committed == 100
    p.stored(105)
    assert p.checkpoint.committed == 105


def test_messages_are_aggregated_together_each_series_joined() -> None:
    p = partition(Checkpoint(0))
    for offset in range(3):
        p.apply(offset, samples(offset))
    assert len(p.aggregator) == 0  # applied, not aggregated until settled
    p.settle()
    assert len(p.aggregator) == 2  # the series' minute and hour, once each
    assert held(p.take(3)) == (0 + 1 + 2, 3)
