"""Compare both backends' stored partials over a range, and repair."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from metaas.server.migration.stages import Role
from metaas.server.model import Partial, PartialKey, Resolution
from metaas.server.storage.base import Storage

MAX_SAMPLES = 10
_REPAIR_CHUNK = 500


@dataclass(slots=True)
class VerifyProgress:
    authoritative: str
    series_total: int = 0
    series_checked: int = 0
    partials_compared: int = 0
    partials_mismatched: int = 0
    partials_repaired: int = 0
    done: bool = False
    samples: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(text)


async def verify_range(
    authoritative: tuple[Role, Storage],
    other: tuple[Role, Storage],
    *,
    app: str,
    start_ms: int,
    end_ms: int,
    metrics: Sequence[str] = (),
    repair: bool = False,
) -> AsyncIterator[VerifyProgress]:
    """Yield progress after each metric; the last one has ``done``.

    Partials are compared by key (series, minute, writer) and content, and so
    are the hourly rollups of every hour the range touches. Where
    the other side lacks a partial or holds a different one, repair writes the
    authoritative one over it (an idempotent upsert). Partials only the other
    side has are reported, not deleted.
    """
    (main_role, main), (other_role, second) = authoritative, other
    progress = VerifyProgress(authoritative=f"{main_role.value} ({main.name})")
    wanted = set(metrics)
    series = {
        s
        for storage in (main, second)
        for s in await storage.list_series(app, start_ms, end_ms)
        if not wanted or s.metric in wanted
    }
    names = sorted({s.metric for s in series})
    progress.series_total = len(series)
    yield progress
    first_hour = Resolution.HOUR.floor(start_ms)
    for metric in names:
        ours: dict[PartialKey, Partial] = {}
        theirs: dict[PartialKey, Partial] = {}
        for resolution, first in ((Resolution.MINUTE, start_ms), (Resolution.HOUR, first_hour)):
            ours |= _by_key(await main.read_partials(app, metric, first, end_ms, resolution))
            theirs |= _by_key(await second.read_partials(app, metric, first, end_ms, resolution))
        to_copy: list[Partial] = []
        for key in sorted(set(ours) | set(theirs), key=_order):
            progress.partials_compared += 1
            mine, copy = ours.get(key), theirs.get(key)
            if mine is not None and copy is not None and mine.distribution == copy.distribution:
                continue
            progress.partials_mismatched += 1
            where = _describe(key)
            if mine is None:
                progress.note(f"only on {other_role.value}: {where}")
                continue
            progress.note(
                f"missing on {other_role.value}: {where}"
                if copy is None
                else f"differs: {where} (count {mine.distribution.count} vs "
                f"{copy.distribution.count})"
            )
            to_copy.append(mine)
        if repair:
            for start in range(0, len(to_copy), _REPAIR_CHUNK):
                await second.write_partials(to_copy[start : start + _REPAIR_CHUNK])
            progress.partials_repaired += len(to_copy)
        progress.series_checked += sum(1 for s in series if s.metric == metric)
        yield progress
    progress.done = True
    yield progress


def _by_key(partials: Sequence[Partial]) -> dict[PartialKey, Partial]:
    return {p.key: p for p in partials}


def _order(key: PartialKey) -> tuple[int, int, str, str]:
    return key.resolution, key.minute_ms, key.series.labels_key, key.writer


def _describe(key: PartialKey) -> str:
    labels = ",".join(f"{k}={v}" for k, v in key.series.labels)
    minute = datetime.fromtimestamp(key.minute_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")
    bucket = "hour from " if key.resolution is Resolution.HOUR else ""
    return f"{{{labels}}} {key.series.metric} {bucket}{minute} writer {key.writer}"
