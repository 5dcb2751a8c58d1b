"""Delivery of sealed log segments' aggregates to every write target.

Each target (a storage backend) has its own FIFO queue and worker. Work for a
target is stored in log order, retried with backoff until the backend takes
it; a slow or failing backend neither blocks nor loses the other's writes.
A segment may be deleted once every target that had work from it has stored
that work (reported through ``on_complete``). FIFO order per target keeps the
epoch invariant of docs/architecture.md: when segment ``e`` is stored on a
target, every earlier segment with work for that target is stored there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from opentelemetry.metrics import CallbackOptions, Observation

from metaas.server.ingest.aggregator import PendingPartial
from metaas.server.ingest.flusher import write_pending
from metaas.server.retry import backoff
from metaas.server.storage.base import Storage
from metaas.server.storage.errors import StorageError
from metaas.server.telemetry import Telemetry

log = logging.getLogger(__name__)
SegmentId = tuple[str, int]  # (writer generation, epoch)


@dataclass(slots=True)
class _Work:
    segment: SegmentId
    pending: list[PendingPartial]
    queued_at: float = field(default_factory=time.monotonic)


class _Target:
    def __init__(self, name: str, storage: Storage) -> None:
        self.name = name
        self.storage = storage
        self.queue: deque[_Work] = deque()
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.task: asyncio.Task[None] | None = None
        self.failing_since: float | None = None

    def lag_s(self) -> float:
        return time.monotonic() - self.queue[0].queued_at if self.queue else 0.0


class Delivery:
    def __init__(
        self,
        targets: Mapping[str, Storage],
        *,
        on_complete: Callable[[SegmentId], Awaitable[None]],
        telemetry: Telemetry,
    ) -> None:
        self._targets = {name: _Target(name, storage) for name, storage in targets.items()}
        self._on_complete = on_complete
        self._outstanding: dict[SegmentId, set[str]] = {}
        self._tracer = telemetry.tracer
        meter = telemetry.meter
        self._seconds = meter.create_histogram(
            "metaas.ingest.flush.duration", unit="s", description="Time to store one segment's work"
        )
        self._rows = meter.create_counter(
            "metaas.ingest.flush.rows", unit="{row}", description="Partials written by flushes"
        )
        self._errors = meter.create_counter(
            "metaas.ingest.flush.errors", unit="{error}", description="Failed store attempts"
        )
        meter.create_observable_gauge(
            "metaas.ingest.write_lag",
            callbacks=[self._observe_lag],
            unit="s",
            description="Age of the oldest work not yet stored, per backend",
        )
        meter.create_observable_gauge(
            "metaas.ingest.write_backlog",
            callbacks=[self._observe_backlog],
            unit="{segment}",
            description="Segments' work queued per backend",
        )

    def lag_s(self) -> dict[str, float]:
        return {name: target.lag_s() for name, target in self._targets.items()}

    def start(self) -> None:
        for target in self._targets.values():
            target.task = asyncio.create_task(self._work(target), name=f"deliver-{target.name}")

    async def submit(self, segment: SegmentId, parts: Mapping[str, list[PendingPartial]]) -> None:
        """Queue a segment's work per target; targets without work are done."""
        names = {name for name, pending in parts.items() if pending}
        if not names:
            await self._on_complete(segment)
            return
        self._outstanding[segment] = set(names)
        for name in sorted(names, key=list(self._targets).index):
            target = self._targets[name]
            target.queue.append(_Work(segment, parts[name]))
            target.idle.clear()
            target.wake.set()

    async def drain(self) -> None:
        """Wait until every queued work item is stored."""
        for target in self._targets.values():
            await target.idle.wait()

    async def stop(self) -> None:
        for target in self._targets.values():
            if target.task is not None:
                target.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await target.task

    async def _work(self, target: _Target) -> None:
        while True:
            if not target.queue:
                target.idle.set()
                target.wake.clear()
                await target.wake.wait()
                continue
            work = target.queue[0]
            await self._store(target, work)
            target.queue.popleft()
            remaining = self._outstanding.get(work.segment)
            if remaining is not None:
                remaining.discard(target.name)
                if not remaining:
                    del self._outstanding[work.segment]
                    await self._on_complete(work.segment)

    async def _store(self, target: _Target, work: _Work) -> None:
        writer, epoch = work.segment
        delays = backoff()
        while True:
            started = time.perf_counter()
            with self._tracer.start_as_current_span("metaas.ingest.flush") as span:
                span.set_attributes(
                    {
                        "metaas.flush.backend": target.name,
                        "metaas.flush.epoch": epoch,
                        "metaas.flush.aggregates": len(work.pending),
                    }
                )
                try:
                    rows = await write_pending(
                        target.storage, work.pending, writer=writer, epoch=epoch
                    )
                except StorageError as error:
                    failure: Exception = error
                except Exception as error:  # noqa: BLE001 - logged, retried, never fatal
                    failure = error
                else:
                    self._seconds.record(time.perf_counter() - started, {"backend": target.name})
                    self._rows.add(rows, {"backend": target.name})
                    if target.failing_since is not None:
                        log.info("backend %s stores again", target.name)
                    target.failing_since = None
                    return
            self._errors.add(1, {"backend": target.name})
            if target.failing_since is None:
                target.failing_since = time.monotonic()
            delay = next(delays)
            log.warning(
                "storing segment %s-%d on %s failed: %r; retrying in %.2fs",
                writer,
                epoch,
                target.name,
                failure,
                delay,
            )
            await asyncio.sleep(delay)

    def _observe_lag(self, _options: CallbackOptions) -> Iterable[Observation]:
        for name, target in self._targets.items():
            yield Observation(target.lag_s(), {"backend": name})

    def _observe_backlog(self, _options: CallbackOptions) -> Iterable[Observation]:
        for name, target in self._targets.items():
            yield Observation(len(target.queue), {"backend": name})
