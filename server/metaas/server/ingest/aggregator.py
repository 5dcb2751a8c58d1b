"""In-memory per-minute aggregates of this server's writes, until flushed.

A *complete* state holds everything this writer generation ever received for
its (series, minute), so the flusher can overwrite the stored row with it. Once
a minute has been flushed and left memory, a late sample for it starts an
*incomplete* state: a delta the flusher must merge into the stored row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from metaas.server.ingest.records import SeriesBatch
from metaas.server.model import SeriesKey
from metaas.server.sketch import Distribution, from_samples_by_minute
from metaas.server.sketch.distribution import MINUTE_MS


@dataclass(slots=True)
class _State:
    distribution: Distribution
    complete: bool
    dirty: bool = True


@dataclass(frozen=True, slots=True)
class PendingPartial:
    """A flush's view of one (series, minute): the whole aggregate when
    ``complete``, else a delta to merge into what storage holds."""

    series: SeriesKey
    minute_ms: int
    distribution: Distribution
    complete: bool


class Aggregator:
    def __init__(self, *, hot_minutes: int, all_incomplete: bool = False) -> None:
        self._hot_ms = hot_minutes * MINUTE_MS
        self._states: dict[tuple[SeriesKey, int], _State] = {}
        # Every minute that ever left memory is <= this, so a new state at or
        # below it may have a stored row already.
        self._evicted_through = 2**62 if all_incomplete else -(2**62)

    def __len__(self) -> int:
        return len(self._states)

    def apply(self, batches: Iterable[SeriesBatch]) -> None:
        for batch in batches:
            for minute, distribution in from_samples_by_minute(batch.times_ms, batch.values):
                key = (batch.series, minute)
                state = self._states.get(key)
                if state is None:
                    self._states[key] = _State(distribution, minute > self._evicted_through)
                else:
                    state.distribution.merge(distribution)
                    state.dirty = True

    def take_dirty(self) -> list[PendingPartial]:
        """Everything changed since the last call. Complete states are copied
        and stay; incomplete ones (deltas) move out, so no delta is merged
        into storage twice."""
        pending = []
        for key, state in list(self._states.items()):
            if not state.dirty:
                continue
            if state.complete:
                state.dirty = False
                pending.append(PendingPartial(key[0], key[1], state.distribution.copy(), True))
            else:
                del self._states[key]
                self._evicted_through = max(self._evicted_through, key[1])
                pending.append(PendingPartial(key[0], key[1], state.distribution, False))
        return pending

    def evict(self, now_ms: int) -> int:
        """Drop flushed states of minutes older than the hot window."""
        horizon = now_ms - self._hot_ms
        stale = [k for k, s in self._states.items() if not s.dirty and k[1] < horizon]
        for key in stale:
            del self._states[key]
            self._evicted_through = max(self._evicted_through, key[1])
        return len(stale)
