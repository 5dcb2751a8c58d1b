"""Remembers answered idempotency keys for a time window, bounded in bytes.

A key belongs to a scope: the caller's identity and the apps its request
writes to, so callers never share keys. A fingerprint of the request body is
kept with it, so the same key with a different body is refused instead of
answered with the first body's result. Keys are never forgotten before their
window ends: when the bound is reached, new keys are refused until the oldest
expire.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Final

from metaas.server.clock import Clock
from metaas.server.ingest.records import LEGACY_SCOPE, KeyEntry, WriteRecord

# Memory of one remembered key besides the text of its key and scope: the
# ordered-dict slot and its (scope, key) tuple, the entry object, the string
# and bytes headers, the 32-byte fingerprint and two integers. tracemalloc
# measured 434-473 bytes on CPython 3.11, depending on how full the dict's
# table is; tests/unit/test_idempotency.py checks the bound still holds.
ENTRY_OVERHEAD_BYTES: Final = 480


class KeyReused(Exception):
    """The key was already used, within the window and by the same caller,
    for a request with a different body."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"idempotency_key {key!r} was already used for a different request within the "
            "window; use a new key for a new request"
        )
        self.key = key


class KeysFull(Exception):
    """Remembering one more key would pass the byte bound; nothing was applied.
    ``retry_after_s`` is the time until the oldest remembered key expires."""

    def __init__(self, used_bytes: int, limit_bytes: int, retry_after_s: float) -> None:
        super().__init__(
            f"remembered idempotency keys hold {used_bytes} bytes (limit {limit_bytes}, "
            f"--idempotency-max-bytes); the oldest expires in {retry_after_s:.1f} s"
        )
        self.used_bytes = used_bytes
        self.limit_bytes = limit_bytes
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class ScopedKey:
    """A request's idempotency key with the scope it belongs to and the
    fingerprint of the body it was sent with."""

    key: str
    scope: str
    fingerprint: bytes

    @classmethod
    def of(cls, key: str, caller: str, apps: Iterable[str], fingerprint: bytes) -> ScopedKey:
        """``key`` of ``caller`` in a request to ``apps`` whose body has
        ``fingerprint`` (see :func:`fingerprint`)."""
        return cls(key, scope_of(caller, apps), fingerprint)

    @property
    def size(self) -> int:
        return entry_size(self.key, self.scope)


def scope_of(caller: str, apps: Iterable[str]) -> str:
    """The caller and the sorted distinct apps, as text that no other
    (caller, apps) pair produces, and that is never the legacy scope."""
    return json.dumps([caller, *sorted(set(apps))], separators=(",", ":"))


def fingerprint(body: bytes) -> bytes:
    """The fingerprint of a request's body: its SHA-256.

    ``body`` must be the request's deterministic serialization: plain
    serialization writes map fields (labels) in insertion order, so equal
    requests could have different fingerprints. Fingerprints outlive a
    restart; should a protobuf upgrade ever change that serialization, a
    retry across the upgrade is refused as KeyReused, never applied twice."""
    return hashlib.sha256(body).digest()


def entry_size(key: str, scope: str) -> int:
    """Bytes one remembered key is accounted for."""
    return ENTRY_OVERHEAD_BYTES + len(key) + len(scope)


@dataclass(slots=True)
class _Attempt:
    future: asyncio.Future[int]
    fingerprint: bytes
    size: int
    reserved: bool  # its bytes are counted here, not yet by an answered entry


class IdempotencyKeys:
    """Answered keys with their answer, ordered by expiry; and keys whose
    first request is still in flight, so a concurrent retry waits for that
    answer instead of applying the request twice. Both count towards
    ``limit_bytes``."""

    def __init__(self, window_ms: int, limit_bytes: int, clock: Clock) -> None:
        self._window_ms = window_ms
        self.limit_bytes = limit_bytes
        self._clock = clock
        self._answered: OrderedDict[tuple[str, str], KeyEntry] = OrderedDict()
        self._in_flight: dict[tuple[str, str], _Attempt] = {}
        self._used = 0

    @property
    def used_bytes(self) -> int:
        """Bytes of answered keys not dropped yet and of keys in flight."""
        return self._used

    def answered(self, request: ScopedKey) -> int | None:
        """The first answer for ``request``'s key in its scope, or None.
        Raises KeyReused if that answer was for a different body."""
        entry = self._answered.get((request.scope, request.key))
        if entry is None:
            # Keys logged in the first format (0) have no scope or
            # fingerprint. They match the key alone, as the release that
            # wrote them did: a retry across the upgrade's restart is the
            # likeliest retry of all, and treating these keys as unknown
            # would apply it twice. The cost, another caller's write with the
            # same key being answered instead of applied, is the old
            # behaviour and ends with these keys' window.
            entry = self._answered.get((LEGACY_SCOPE, request.key))
            if entry is None:
                return None
        if entry.expires_ms <= self._clock.now_ms():
            self._forget((entry.scope, entry.key))
            return None
        if entry.scope != LEGACY_SCOPE and entry.fingerprint != request.fingerprint:
            raise KeyReused(request.key)
        return entry.accepted

    def in_flight(self, request: ScopedKey) -> asyncio.Future[int] | None:
        """The first attempt with ``request``'s key in its scope if it is not
        answered yet. Raises KeyReused if that attempt has a different body."""
        attempt = self._in_flight.get((request.scope, request.key))
        if attempt is None:
            return None
        if attempt.fingerprint != request.fingerprint:
            raise KeyReused(request.key)
        return attempt.future

    def begin(
        self, request: ScopedKey, attempt: Callable[[], Coroutine[Any, Any, int]]
    ) -> asyncio.Future[int]:
        """Reserve room for ``request``'s key, then start ``attempt()`` and
        keep the key in flight until it is done. Raises KeysFull, before
        ``attempt`` is called, if there is no room."""
        self._drop_expired()
        size = request.size
        if self._used + size > self.limit_bytes:
            raise KeysFull(self._used, self.limit_bytes, self._retry_after_s())
        future = asyncio.ensure_future(attempt())
        scoped = (request.scope, request.key)
        self._in_flight[scoped] = _Attempt(future, request.fingerprint, size, reserved=True)
        self._used += size
        future.add_done_callback(lambda done: self._finish(scoped, done))
        return future

    def _finish(self, scoped: tuple[str, str], future: asyncio.Future[int]) -> None:
        attempt = self._in_flight.get(scoped)
        if attempt is not None and attempt.future is future:
            del self._in_flight[scoped]
            if attempt.reserved:  # not answered: the room is free again
                self._used -= attempt.size
        if not future.cancelled():
            future.exception()  # retrieved: each waiter got its own copy

    def record(self, request: ScopedKey, accepted: int, recorded_ms: int) -> None:
        """Remember the answer of an applied request. Its in-flight
        reservation becomes the answered entry's room, so the bytes are
        counted once."""
        attempt = self._in_flight.get((request.scope, request.key))
        if attempt is not None and attempt.reserved:
            attempt.reserved = False
            self._used -= attempt.size
        self.restore(
            KeyEntry(
                request.key,
                request.scope,
                request.fingerprint,
                accepted,
                recorded_ms + self._window_ms,
            )
        )

    def entry(self, record: WriteRecord) -> KeyEntry:
        """The entry a logged write leaves behind."""
        batch = record.batch
        return KeyEntry(
            batch.idempotency_key,
            record.scope,
            batch.fingerprint,
            batch.samples,
            record.recorded_ms + self._window_ms,
        )

    def restore(self, entry: KeyEntry) -> None:
        """Remember ``entry`` unless it has expired, whatever the bound: an
        unexpired key is never dropped, so keys restored past the bound make
        new keys wait. Entries must come oldest first."""
        if entry.expires_ms <= self._clock.now_ms():
            return
        scoped = (entry.scope, entry.key)
        if scoped in self._answered:  # e.g. in a segment's snapshot and in its write record
            self._forget(scoped)
        self._answered[scoped] = entry
        self._used += entry_size(entry.key, entry.scope)

    def snapshot(self) -> list[KeyEntry]:
        """Live entries, for the head of a new log segment."""
        self._drop_expired()
        return list(self._answered.values())

    def _drop_expired(self) -> None:
        now = self._clock.now_ms()
        while self._answered:
            oldest = next(iter(self._answered.values()))
            if oldest.expires_ms > now:
                break
            self._forget((oldest.scope, oldest.key))

    def _forget(self, scoped: tuple[str, str]) -> None:
        entry = self._answered.pop(scoped)
        self._used -= entry_size(entry.key, entry.scope)

    def _retry_after_s(self) -> float:
        """Seconds until the oldest answered key expires; a full window when
        only keys in flight hold the room (they are remembered once answered)."""
        if not self._answered:
            return self._window_ms / 1000
        oldest = next(iter(self._answered.values()))
        return max(oldest.expires_ms - self._clock.now_ms(), 1) / 1000

    def __len__(self) -> int:
        return len(self._answered)
