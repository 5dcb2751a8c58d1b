"""What a consumer holds for one partition it owns: its checkpoint, the
aggregates of the offsets consumed since the last flush, and the flush ends
a replay must reproduce."""

from __future__ import annotations

import numpy as np

from metaas.server.ingest.aggregator import Aggregator, PendingPartial
from metaas.server.ingest.records import SeriesBatch
from metaas.server.kafka.checkpoint import Checkpoint
from metaas.server.model import SeriesKey


def writer_of(topic: str, number: int) -> str:
    """The writer identity of a partition's partials: one per partition,
    whichever replica owns it (docs/architecture.md, "Kafka ingest")."""
    return f"kafka/{topic}/{number}"


class Partition:
    def __init__(
        self,
        topic: str,
        number: int,
        checkpoint: Checkpoint,
        *,
        hot_minutes: int,
        views: tuple[str, ...] | None,
    ) -> None:
        self.topic = topic
        self.number = number
        self.writer = writer_of(topic, number)
        self.checkpoint = checkpoint
        # The previous owner's flush ends not stored everywhere yet: this
        # owner's flushes must end exactly there, in order.
        self.replay = list(checkpoint.intents)
        # The next offset to apply (None until the first message when the
        # group has committed nothing), and the end of the last flush.
        self.next_offset = checkpoint.committed
        self.flushed_to = checkpoint.committed
        # Every state is a delta: the rows may hold offsets this owner never
        # saw, so each is merged into its row unless the row covers it.
        self.aggregator = Aggregator(hot_minutes=hot_minutes, all_incomplete=True, views=views)
        self._unsettled: list[SeriesBatch] = []  # applied, not aggregated yet
        self.in_flight: set[int] = set()  # flush ends submitted, not yet stored
        # Flush ends stored while an earlier one is not (a flush of dead
        # letters only is stored at once; backends finish out of order).
        self._stored_early: set[int] = set()
        self.end_offset: int | None = None  # the high watermark when last seen
        self.paused = False
        self.owned = True

    def is_duplicate(self, offset: int) -> bool:
        return self.next_offset is not None and offset < self.next_offset

    def boundary_before(self, offset: int) -> int | None:
        """A replayed flush end that must be flushed before ``offset`` is
        applied."""
        return self.replay[0] if self.replay and offset >= self.replay[0] else None

    def apply(self, offset: int, batches: list[SeriesBatch] | None) -> None:
        """Count ``offset`` as consumed, with its samples (None: invalid).
        The samples are aggregated by :meth:`settle`."""
        if self.checkpoint.committed is None:
            # Nothing committed: consumption started here (the earliest
            # offset kept), so nothing below it is this group's to store.
            self.checkpoint.committed = offset
            self.flushed_to = offset
        if batches:
            self._unsettled.extend(batches)
        self.next_offset = offset + 1

    def settle(self) -> None:
        """Aggregate the samples applied since the last call in one pass, each
        series' samples of every message joined first: a series pays one
        merge into its minute and hour per pass, not one per message."""
        if self._unsettled:
            batches, self._unsettled = self._unsettled, []
            self.aggregator.apply(_joined(batches))

    def boundary_reached(self) -> int | None:
        """The replayed flush end the consumed offsets have just reached."""
        if self.replay and self.next_offset is not None and self.next_offset >= self.replay[0]:
            return self.replay[0]
        return None

    def flush_end(self) -> int | None:
        """Where a periodic flush would end: the next offset, if anything was
        consumed since the last flush and no replayed end is pending (a
        replay flushes only at its recorded ends)."""
        if self.replay or self.next_offset is None or self.flushed_to is None:
            return None
        return self.next_offset if self.next_offset > self.flushed_to else None

    def take(self, end: int) -> list[PendingPartial]:
        """The aggregates of the offsets below ``end``, moved out for a flush."""
        self.settle()
        if self.replay and self.replay[0] == end:
            self.replay.pop(0)
        self.flushed_to = end
        self.in_flight.add(end)
        return self.aggregator.take_dirty()

    def stored(self, end: int) -> None:
        """The flush ending at ``end`` is stored on every backend. The
        checkpoint advances past it only once every earlier flush is too.
        A flush this owner did not submit (one of an earlier owner in this
        process, withdrawn but already being written) is not its to count."""
        if end not in self.in_flight:
            return
        self.in_flight.discard(end)
        self._stored_early.add(end)
        waiting = min(self.in_flight, default=None)
        ready = {e for e in self._stored_early if waiting is None or e < waiting}
        if ready:
            self.checkpoint.stored(max(ready))
            self._stored_early -= ready

    @property
    def lag(self) -> int | None:
        committed = self.checkpoint.committed
        if self.end_offset is None or committed is None:
            return None
        return max(self.end_offset - committed, 0)


def _joined(batches: list[SeriesBatch]) -> list[SeriesBatch]:
    """One batch per series, its samples in the order they came."""
    by_series: dict[SeriesKey, list[SeriesBatch]] = {}
    for batch in batches:
        by_series.setdefault(batch.series, []).append(batch)
    return [
        parts[0]
        if len(parts) == 1
        else SeriesBatch(
            series,
            np.concatenate([b.times_ms for b in parts]),
            np.concatenate([b.values for b in parts]),
        )
        for series, parts in by_series.items()
    ]
