"""A partition's checkpoint, kept in the consumer group's committed offset.

Kafka stores, per group and partition, an offset and a short metadata
string, and refuses a commit from a member that no longer owns the
partition (a rebalance moved it, or its session expired). The checkpoint
lives there, so ownership fences it for free:

- the *offset* is ``committed``: every message below it is stored on every
  backend;
- the *metadata* holds the *intents*: the ends of the flushes begun and not
  yet stored everywhere, ascending. A flush ending at ``e`` stores its
  partials with epoch ``e``; ``e`` is recorded here before the first of
  them is written.

Whoever takes the partition next reads this back and resumes at
``committed``, ending its first flushes exactly at the recorded intents, so
a replayed range merges only into rows that do not hold it yet (see
docs/architecture.md, "Kafka ingest").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Final

# A metadata string this module did not write (another tool committed
# offsets for the group) is read as no intents.
_VERSION: Final = 1
# Flushes begun and not yet stored, per partition, before it is paused:
# bounds the metadata (Kafka's default limit is 4096 bytes) and the replay.
MAX_INTENTS: Final = 64


@dataclass(slots=True)
class Checkpoint:
    committed: int | None = None  # None: nothing committed yet
    intents: list[int] = field(default_factory=list)

    def metadata(self) -> str:
        return json.dumps({"v": _VERSION, "intents": self.intents}, separators=(",", ":"))

    @classmethod
    def read(cls, offset: int, metadata: str | None) -> Checkpoint:
        """The checkpoint of a committed ``offset`` (negative: none) and its
        metadata."""
        committed = offset if offset >= 0 else None
        return cls(committed, _intents(metadata, committed))

    def begin(self, end: int) -> None:
        """Record a flush ending at ``end`` (before any of it is stored)."""
        if not self.intents or self.intents[-1] < end:
            self.intents.append(end)

    def stored(self, end: int) -> None:
        """Everything below ``end`` is stored on every backend."""
        if self.committed is None or end > self.committed:
            self.committed = end
        self.intents = [e for e in self.intents if e > end]


def _intents(metadata: str | None, committed: int | None) -> list[int]:
    if not metadata:
        return []
    try:
        decoded = json.loads(metadata)
        if decoded.get("v") != _VERSION:
            return []
        ends = [int(e) for e in decoded["intents"]]
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError):
        return []
    floor = committed if committed is not None else -1
    return sorted({e for e in ends if e > floor})
