"""Exponential backoff with full jitter."""

from __future__ import annotations

import random
from collections.abc import Iterator


def backoff(base_s: float = 0.1, cap_s: float = 5.0) -> Iterator[float]:
    """Endless delays: uniform in [0, min(cap, base * 2**attempt)]."""
    attempt = 0
    while True:
        yield random.uniform(0.0, min(cap_s, base_s * 2.0**attempt))
        attempt = min(attempt + 1, 30)
