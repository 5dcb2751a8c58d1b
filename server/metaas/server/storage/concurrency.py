"""Concurrent backend calls that fail as one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

_T = TypeVar("_T")


async def gather_or_cancel(calls: Iterable[Awaitable[_T]]) -> list[_T]:
    """Await every call concurrently and return their results in order. On
    the first error (or when cancelled) cancel the rest, wait for them to
    stop, and raise it: a plain error, not an ExceptionGroup, for callers
    that translate or retry it."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
