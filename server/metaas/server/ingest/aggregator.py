"""In-memory per-minute and per-hour aggregates of this server's writes,
until flushed. Each sample lands in its minute's state and in its hour's
state (the hourly rollup, see :class:`metaas.server.model.Resolution`).

A *complete* state holds everything this writer generation ever received for
its (series, bucket), so a flush can overwrite the stored row with it. Once
a bucket has been flushed and left memory, a late sample for it starts an
*incomplete* state: a delta a flush must merge into the stored row.
Minutes stay in memory for the hot window after they end, hours likewise.

The memory each state holds is estimated (:func:`estimated_bytes`) and summed
in ``held_bytes``, so admission can push writes back before memory grows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from metaas.server.ingest.records import SeriesBatch
from metaas.server.model import Resolution, SeriesKey, views_of
from metaas.server.sketch import Distribution
from metaas.server.sketch.distribution import by_bucket
from metaas.server.sketch.mapping import SCALE
from metaas.server.sketch.store import MAX_BUCKETS

_MINUTE: Final = Resolution.MINUTE
_HOUR: Final = Resolution.HOUR
# Series whose view series are remembered (cleared when full).
_VIEWS_REMEMBERED: Final = 100_000
# Memory of one aggregate besides its bucket counts: the distribution, its
# sketch and stores, the counts' array objects, and the state or pending
# entry around them. Measured: a server's resident memory grows by about
# 1 KiB per aggregate of a few values.
AGGREGATE_OVERHEAD_BYTES: Final = 1024


def estimated_bytes(distribution: Distribution) -> int:
    """Memory held by one aggregate, from its count, minimum and maximum: an
    upper bound of its bucket counts plus a fixed overhead.

    The sketch keeps dense counts from the lowest to the highest bucket of
    each sign, each of the narrowest width that holds their sum, and never
    more than MAX_BUCKETS per sign. The range of a sign is known from the
    minimum and maximum when all values share it; otherwise (both signs, or
    zeros beside one sign) the smallest magnitude is unknown and that sign
    is assumed to take MAX_BUCKETS."""
    count, low, high = distribution.count, distribution.min, distribution.max
    if not count:
        return AGGREGATE_OVERHEAD_BYTES
    width = 1 if count < 1 << 8 else 2 if count < 1 << 16 else 4 if count < 1 << 32 else 8
    if low > 0.0:
        buckets = _buckets_between(low, high)
    elif high < 0.0:
        buckets = _buckets_between(-high, -low)
    else:
        buckets = (MAX_BUCKETS if high > 0.0 else 0) + (MAX_BUCKETS if low < 0.0 else 0)
    return AGGREGATE_OVERHEAD_BYTES + width * buckets


def _buckets_between(smallest: float, largest: float) -> int:
    """Buckets spanned by magnitudes from ``smallest`` to ``largest`` (> 0)."""
    # The ratio may overflow to infinity; the bound applies first.
    return int(min(math.log2(largest / smallest) * (1 << SCALE) + 2, MAX_BUCKETS))


_Key = tuple[SeriesKey, Resolution, int]  # series, resolution, bucket start


@dataclass(slots=True)
class _State:
    distribution: Distribution
    complete: bool
    # estimated_bytes of the distribution when it was created or last taken
    # by a flush (merges in between are counted at the next flush).
    nbytes: int


@dataclass(frozen=True, slots=True)
class PendingPartial:
    """A flush's view of one (series, bucket): the whole aggregate when
    ``complete``, else a delta to merge into what storage holds."""

    series: SeriesKey
    minute_ms: int
    distribution: Distribution
    complete: bool
    resolution: Resolution = Resolution.MINUTE
    nbytes: int = 0  # estimated_bytes of the distribution


class Aggregator:
    def __init__(
        self,
        *,
        hot_minutes: int,
        all_incomplete: bool = False,
        views: tuple[str, ...] | None = None,
    ) -> None:
        self._hot_ms = hot_minutes * _MINUTE
        # The labels projected into views (None: no views are kept), and each
        # series' view series, worked out once.
        self._views = views
        self._views_of: dict[SeriesKey, list[SeriesKey]] = {}
        self._states: dict[_Key, _State] = {}
        # What a flush and an evict look at, so that their cost follows what
        # changed and what leaves, not every state held (tens of thousands
        # for a large tenant, every flush, on the serving loop): the states
        # changed since the last flush (a dict: in the order they changed),
        # and the held states of each bucket (resolution, start).
        self._dirty: dict[_Key, None] = {}
        self._buckets: dict[tuple[Resolution, int], set[_Key]] = {}
        # Every bucket that ever left memory starts at or before this (per
        # resolution), so a new state there may have a stored row already.
        start = 2**62 if all_incomplete else -(2**62)
        self._evicted_through = {_MINUTE: start, _HOUR: start}
        # The hot window's start at the last evict: a complete state whose
        # last minute is older leaves memory at the next evict anyway.
        self._horizon_ms = -(2**62)
        self._held_bytes = 0

    def __len__(self) -> int:
        return len(self._states)

    @property
    def held_bytes(self) -> int:
        """Estimated memory of the states held (see :func:`estimated_bytes`)."""
        return self._held_bytes

    def apply(self, batches: Iterable[SeriesBatch]) -> None:
        """Add a request's samples: each series' minutes, then its hours,
        each built in one vectorised pass over the whole request."""
        batches = list(batches)
        if not batches:
            return
        times = [b.times_ms for b in batches]
        values = [b.values for b in batches]
        for resolution in (_MINUTE, _HOUR):
            # Each view's share of this request, per bucket: the series'
            # distributions, merged once below.
            views: dict[tuple[SeriesKey, int], list[Distribution]] = {}
            for index, start, distribution in by_bucket(times, values, resolution):
                series = batches[index].series
                if self._views is not None:
                    for view in self._view_series(series):
                        views.setdefault((view, start), []).append(distribution)
                self._add((series, resolution, start), distribution)
            for (view, start), parts in views.items():
                self._add((view, resolution, start), Distribution.merged(parts))

    def _add(self, key: _Key, distribution: Distribution) -> None:
        state = self._states.get(key)
        if state is None:
            self._states[key] = self._new(key[1], key[2], distribution)
            bucket = (key[1], key[2])
            held = self._buckets.get(bucket)
            if held is None:
                self._buckets[bucket] = {key}
            else:
                held.add(key)
        else:
            state.distribution.merge(distribution)
        self._dirty[key] = None

    def _view_series(self, series: SeriesKey) -> list[SeriesKey]:
        views = self._views_of.get(series)
        if views is None:
            assert self._views is not None
            if len(self._views_of) >= _VIEWS_REMEMBERED:
                self._views_of.clear()
            views = self._views_of[series] = views_of(series, self._views)
        return views

    def _new(self, resolution: Resolution, start: int, distribution: Distribution) -> _State:
        nbytes = estimated_bytes(distribution)
        self._held_bytes += nbytes
        return _State(distribution, start > self._evicted_through[resolution], nbytes)

    def take_dirty(self) -> list[PendingPartial]:
        """Everything changed since the last call. Complete states in the hot
        window (as of the last evict) are copied and stay; older ones, which
        the next evict drops, and incomplete ones (deltas) move out, so no
        delta is merged into storage twice and a backfill is not held twice."""
        pending = []
        horizon = self._horizon_ms
        dirty, self._dirty = self._dirty, {}
        for key in dirty:
            state = self._states[key]
            series, resolution, start = key
            nbytes = estimated_bytes(state.distribution)
            self._held_bytes += nbytes - state.nbytes
            state.nbytes = nbytes
            if state.complete and start + resolution - _MINUTE >= horizon:
                distribution = state.distribution.copy()
            else:
                self._remove(key)
                distribution = state.distribution
            pending.append(
                PendingPartial(series, start, distribution, state.complete, resolution, nbytes)
            )
        return pending

    def evict(self, now_ms: int) -> int:
        """Drop flushed states whose last minute is older than the hot window."""
        horizon = now_ms - self._hot_ms
        self._horizon_ms = max(self._horizon_ms, horizon)
        old = [b for b in self._buckets if b[1] + b[0] - _MINUTE < horizon]
        stale = [k for b in old for k in self._buckets[b] if k not in self._dirty]
        for key in stale:
            self._remove(key)
        return len(stale)

    def _remove(self, key: _Key) -> None:
        self._held_bytes -= self._states.pop(key).nbytes
        self._dirty.pop(key, None)
        bucket = (key[1], key[2])
        held = self._buckets[bucket]
        held.discard(key)
        if not held:
            del self._buckets[bucket]
        self._left(key[1], key[2])

    def _left(self, resolution: Resolution, start: int) -> None:
        self._evicted_through[resolution] = max(self._evicted_through[resolution], start)
