"""The retention, applied once for every backend.

Reads never return data older than the retention: a bucket is readable
until its last minute leaves the retention. :class:`Retained` applies that
rule to every read of the Storage it wraps (``open_storage`` composes it),
so backends need not; a backend only makes old data expire (TTL or purge),
which may happen later than the rule hides it. The query engine plans its
reads from the same rule.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from metaas.server.clock import Clock
from metaas.server.model import Labels, Partial, PartialKey, Resolution, SeriesKey
from metaas.server.storage.base import Storage


@dataclass(frozen=True, slots=True)
class Retention:
    """``retention_ms`` back from the clock's now."""

    retention_ms: int
    clock: Clock

    def oldest_ms(self) -> int:
        """The oldest readable minute (a bucket is readable while its last
        minute is at or after it)."""
        return self.clock.now_ms() - self.retention_ms

    def clamp(self, start_ms: int) -> int:
        """``start_ms``, or the oldest readable minute when it is older."""
        return max(start_ms, self.oldest_ms())


class Retained:
    """A Storage whose reads leave out what the retention no longer holds;
    writes and everything else go to the wrapped one unchanged."""

    def __init__(self, inner: Storage, retention: Retention) -> None:
        self._inner = inner
        self._retention = retention

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def inner(self) -> Storage:
        return self._inner

    async def write_partials(self, partials: Sequence[Partial]) -> None:
        await self._inner.write_partials(partials)

    async def read_partials(
        self,
        app: str,
        metric: str,
        start_ms: int,
        end_ms: int,
        resolution: Resolution = Resolution.MINUTE,
        series: Collection[SeriesKey] | None = None,
    ) -> Sequence[Partial]:
        start_ms = self._retention.clamp(start_ms)
        if resolution.ceil(start_ms) >= end_ms or (series is not None and not series):
            return []  # no bucket starts in the range, or no series is asked for
        return await self._inner.read_partials(app, metric, start_ms, end_ms, resolution, series)

    async def find_series(
        self, app: str, metric: str, start_ms: int, end_ms: int, matchers: Labels
    ) -> Sequence[SeriesKey]:
        start_ms = self._retention.clamp(start_ms)
        if start_ms >= end_ms:
            return []
        return await self._inner.find_series(app, metric, start_ms, end_ms, matchers)

    async def get_partials(self, keys: Sequence[PartialKey]) -> Mapping[PartialKey, Partial]:
        oldest = self._retention.oldest_ms()
        live = [key for key in keys if key.last_minute_ms >= oldest]
        if not live:
            return {}
        return await self._inner.get_partials(live)

    async def list_series(
        self, app: str, start_ms: int, end_ms: int, metric: str | None = None
    ) -> Sequence[SeriesKey]:
        start_ms = self._retention.clamp(start_ms)
        if start_ms >= end_ms:
            return []
        return await self._inner.list_series(app, start_ms, end_ms, metric)

    async def close(self) -> None:
        await self._inner.close()
