"""Per-key asyncio locks, so two writes in this process never interleave
the read-merge-write of the same item."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable

Key = tuple[str, str]


class KeyedLocks:
    """Locks created on first use and dropped when nobody holds or awaits them."""

    def __init__(self) -> None:
        self._locks: dict[Key, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, keys: Iterable[Key]) -> AsyncIterator[None]:
        """Hold the locks of all ``keys``, taken in sorted order so that two
        callers with overlapping keys cannot deadlock."""
        async with contextlib.AsyncExitStack() as stack:
            for key in sorted(set(keys)):
                lock = self._join(key)
                stack.callback(self._leave, key)
                await stack.enter_async_context(lock)
            yield

    def __len__(self) -> int:
        return len(self._locks)

    def _join(self, key: Key) -> asyncio.Lock:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        return lock

    def _leave(self, key: Key) -> None:
        lock, users = self._locks[key]
        if users == 1:
            del self._locks[key]
        else:
            self._locks[key] = (lock, users - 1)
