"""Remembers answered idempotency keys for a time window."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from metaas.server.clock import Clock
from metaas.server.ingest.records import KeyEntry, WriteRecord


class IdempotencyKeys:
    """Answered keys with their answer, oldest first, bounded in number; and
    keys whose first request is still in flight, so a concurrent retry waits
    for that answer instead of applying the request twice."""

    def __init__(self, window_ms: int, max_keys: int, clock: Clock) -> None:
        self._window_ms = window_ms
        self._max_keys = max_keys
        self._clock = clock
        self._answered: OrderedDict[str, KeyEntry] = OrderedDict()
        self._in_flight: dict[str, asyncio.Future[int]] = {}

    def answered(self, key: str) -> int | None:
        entry = self._answered.get(key)
        if entry is None:
            return None
        if entry.expires_ms <= self._clock.now_ms():
            del self._answered[key]
            return None
        return entry.accepted

    def in_flight(self, key: str) -> asyncio.Future[int] | None:
        return self._in_flight.get(key)

    def begin(self, key: str, attempt: asyncio.Future[int]) -> None:
        """Mark ``key`` in flight until ``attempt`` is done."""
        self._in_flight[key] = attempt
        attempt.add_done_callback(lambda done: self._finish(key, done))

    def _finish(self, key: str, attempt: asyncio.Future[int]) -> None:
        if self._in_flight.get(key) is attempt:
            del self._in_flight[key]
        if not attempt.cancelled():
            attempt.exception()  # retrieved: each waiter got its own copy

    def record(self, key: str, accepted: int, recorded_ms: int) -> None:
        self.restore(KeyEntry(key, accepted, recorded_ms + self._window_ms))

    def entry(self, record: WriteRecord) -> KeyEntry:
        """The entry a logged write leaves behind."""
        return KeyEntry(
            record.idempotency_key, record.accepted, record.recorded_ms + self._window_ms
        )

    def restore(self, entry: KeyEntry) -> None:
        if entry.expires_ms <= self._clock.now_ms():
            return
        self._answered[entry.key] = entry
        self._answered.move_to_end(entry.key)
        while len(self._answered) > self._max_keys:
            self._answered.popitem(last=False)

    def snapshot(self) -> list[KeyEntry]:
        """Live entries, for the head of a new log segment."""
        now = self._clock.now_ms()
        while self._answered:
            oldest = next(iter(self._answered.values()))
            if oldest.expires_ms > now:
                break
            self._answered.popitem(last=False)
        return list(self._answered.values())

    def __len__(self) -> int:
        return len(self._answered)
