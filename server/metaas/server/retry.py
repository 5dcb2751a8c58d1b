"""Exponential backoff with full jitter, and a loop that outlives its failures."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Final

log = logging.getLogger(__name__)
# A run that lasted this long was healthy: the next failure starts the
# backoff afresh instead of waiting the longest delay.
_HEALTHY_RUN_S: Final = 60.0


def backoff(base_s: float = 0.1, cap_s: float = 5.0) -> Iterator[float]:
    """Endless delays: uniform in [0, min(cap, base * 2**attempt)]."""
    attempt = 0
    while True:
        yield random.uniform(0.0, min(cap_s, base_s * 2.0**attempt))
        attempt = min(attempt + 1, 30)


def describe_error(error: BaseException) -> str:
    """``Type: message`` for logs and status lines (``Type`` alone if the
    message is empty, as for a bare TimeoutError)."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def keep_running(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    on_failure: Callable[[Exception], None],
    delays: Callable[[], Iterator[float]] = backoff,
) -> None:
    """Await ``run()`` until it returns or this is cancelled. Whenever it
    raises, log the error, call ``on_failure`` with it and run it again after
    a backoff delay: one failed step of a background loop (delivery, cleanup)
    must not stop that loop for good, and must not go unnoticed either."""
    waits = delays()
    while True:
        started = time.monotonic()
        try:
            await run()
        except Exception as error:
            on_failure(error)
            if time.monotonic() - started > _HEALTHY_RUN_S:
                waits = delays()
            delay = next(waits)
            log.exception("%s failed; restarting it in %.2fs", name, delay)
            await asyncio.sleep(delay)
        else:
            return
