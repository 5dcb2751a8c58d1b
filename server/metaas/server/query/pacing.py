"""Slices of CPU work on the event loop.

A heavy query merges hundreds of thousands of distributions in Python. Run
in one go it holds the event loop for seconds: health checks and every other
RPC wait, and a caller's deadline cannot interrupt it. Work paced here hands
the loop back after each slice, so other requests are served between slices,
and a query whose deadline passed (or whose RPC was cancelled) gets
CancelledError at its next pause: no further slice runs, and what it held is
released as its frames unwind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

# Long enough that pausing costs a few percent of the work at most, short
# enough that a few heavy queries together keep the loop's turns short.
SLICE_S: Final = 0.002


class Pacer:
    """Call :meth:`pause` between small steps of CPU work; it yields to the
    event loop once a slice's worth of time has passed since the last yield."""

    __slots__ = ("_clock", "_since", "_slice_s")

    def __init__(
        self, slice_s: float = SLICE_S, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._slice_s = slice_s
        self._clock = clock
        self._since = clock()

    async def pause(self) -> None:
        """Yield when the slice is used up; raises CancelledError there when
        the task was cancelled meanwhile."""
        if self._clock() - self._since >= self._slice_s:
            await asyncio.sleep(0)
            self._since = self._clock()
