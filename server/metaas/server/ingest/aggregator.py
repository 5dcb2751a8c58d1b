"""In-memory per-minute and per-hour aggregates of this server's writes,
until flushed. Each sample lands in its minute's state and in its hour's
state (the hourly rollup, see :class:`metaas.server.model.Resolution`).

A *complete* state holds everything this writer generation ever received for
its (series, bucket), so the flusher can overwrite the stored row with it. Once
a bucket has been flushed and left memory, a late sample for it starts an
*incomplete* state: a delta the flusher must merge into the stored row.
Minutes stay in memory for the hot window after they end, hours likewise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from metaas.server.ingest.records import SeriesBatch
from metaas.server.model import Resolution, SeriesKey
from metaas.server.sketch import Distribution
from metaas.server.sketch.distribution import by_bucket

_MINUTE: Final = Resolution.MINUTE
_HOUR: Final = Resolution.HOUR


@dataclass(slots=True)
class _State:
    distribution: Distribution
    complete: bool
    dirty: bool = True


@dataclass(frozen=True, slots=True)
class PendingPartial:
    """A flush's view of one (series, bucket): the whole aggregate when
    ``complete``, else a delta to merge into what storage holds."""

    series: SeriesKey
    minute_ms: int
    distribution: Distribution
    complete: bool
    resolution: Resolution = Resolution.MINUTE


class Aggregator:
    def __init__(self, *, hot_minutes: int, all_incomplete: bool = False) -> None:
        self._hot_ms = hot_minutes * _MINUTE
        self._states: dict[tuple[SeriesKey, Resolution, int], _State] = {}
        # Every bucket that ever left memory starts at or before this (per
        # resolution), so a new state there may have a stored row already.
        start = 2**62 if all_incomplete else -(2**62)
        self._evicted_through = {_MINUTE: start, _HOUR: start}

    def __len__(self) -> int:
        return len(self._states)

    def apply(self, batches: Iterable[SeriesBatch]) -> None:
        """Add a request's samples: each series' minutes, then its hours,
        each built in one vectorised pass over the whole request."""
        batches = list(batches)
        if not batches:
            return
        times = [b.times_ms for b in batches]
        values = [b.values for b in batches]
        states = self._states
        for resolution in (_MINUTE, _HOUR):
            for index, start, distribution in by_bucket(times, values, resolution):
                key = (batches[index].series, resolution, start)
                state = states.get(key)
                if state is None:
                    states[key] = self._new(resolution, start, distribution)
                else:
                    state.distribution.merge(distribution)
                    state.dirty = True

    def _new(self, resolution: Resolution, start: int, distribution: Distribution) -> _State:
        return _State(distribution, start > self._evicted_through[resolution])

    def take_dirty(self) -> list[PendingPartial]:
        """Everything changed since the last call. Complete states are copied
        and stay; incomplete ones (deltas) move out, so no delta is merged
        into storage twice."""
        pending = []
        for key, state in list(self._states.items()):
            if not state.dirty:
                continue
            series, resolution, start = key
            if state.complete:
                state.dirty = False
                distribution = state.distribution.copy()
            else:
                del self._states[key]
                self._left(resolution, start)
                distribution = state.distribution
            pending.append(PendingPartial(series, start, distribution, state.complete, resolution))
        return pending

    def evict(self, now_ms: int) -> int:
        """Drop flushed states whose last minute is older than the hot window."""
        horizon = now_ms - self._hot_ms
        stale = [
            k for k, s in self._states.items() if not s.dirty and k[2] + k[1] - _MINUTE < horizon
        ]
        for key in stale:
            del self._states[key]
            self._left(key[1], key[2])
        return len(stale)

    def _left(self, resolution: Resolution, start: int) -> None:
        self._evicted_through[resolution] = max(self._evicted_through[resolution], start)
