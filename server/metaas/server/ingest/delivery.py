"""Delivery of sealed log segments' aggregates to every write target.

Each target (a storage backend, keyed by its role, as routing names it) has
its own FIFO queue and worker. Work for a target is stored in log order,
retried with backoff until the backend takes it; a slow or failing backend
neither blocks nor loses the other's writes. A segment may be deleted once
every target that had work from it has stored that work (``on_complete``,
through :class:`.cleanup.SegmentCleanup`). FIFO order per target keeps the
epoch invariant of docs/architecture.md: when segment ``e`` is stored on a
target, every earlier segment with work for that target is stored there too.

Queued work is memory: ``held_bytes`` estimates it (each partial counted
once, however many targets it goes to) until every target stores it, so
admission can push writes back while a backend is behind.

Every worker runs under ``keep_running``, so no failed step stops delivery
for good. Failures are counted in metrics and described by ``problems()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from opentelemetry.metrics import CallbackOptions, Observation

from metaas.server.ingest.aggregator import PendingPartial
from metaas.server.ingest.cleanup import Failure, SegmentCleanup, failed_again
from metaas.server.ingest.partials import write_pending
from metaas.server.ingest.wal import SegmentId
from metaas.server.retry import backoff, describe_error, keep_running
from metaas.server.storage.base import Storage
from metaas.server.storage.errors import StorageError
from metaas.server.telemetry import Telemetry

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Work:
    segment: SegmentId
    pending: list[PendingPartial]
    queued_at: float = field(default_factory=time.monotonic)
    withdrawn: bool = False  # its writer lost the right to store it


@dataclass(slots=True)
class _Outstanding:
    """A queued segment: the targets that still have to store its work, and
    the estimated memory of its partials, held until they all have."""

    targets: set[str]
    nbytes: int


class _Target:
    def __init__(self, role: str, storage: Storage) -> None:
        self.role = role
        self.storage = storage
        self.queue: deque[_Work] = deque()
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.task: asyncio.Task[None] | None = None
        self.failing: Failure | None = None  # storing the head of the queue
        self.storing = False  # the head of the queue is being stored
        self.crashed: Failure | None = None  # the worker itself, until it stores again

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
        """``targets``: the backends keyed by role; ``on_complete`` deletes a
        segment stored on every target that had work from it."""
        self._targets = {role: _Target(role, storage) for role, storage in targets.items()}
        self._outstanding: dict[SegmentId, _Outstanding] = {}
        self._held_bytes = 0
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
        self._restarts = meter.create_counter(
            "metaas.ingest.task.restarts",
            unit="{restart}",
            description="Background ingest tasks restarted after an unexpected error",
        )
        self._cleanup = SegmentCleanup(on_complete, meter=meter, restarts=self._restarts)
        meter.create_observable_gauge(
            "metaas.ingest.write_lag",
            callbacks=[self._observe_lag],
            unit="s",
            description="Age of the oldest work not yet stored, per backend (by its role)",
        )
        meter.create_observable_gauge(
            "metaas.ingest.write_backlog",
            callbacks=[self._observe_backlog],
            unit="{segment}",
            description="Segments' work queued per backend (by its role)",
        )

    def lag_s(self) -> dict[str, float]:
        """Per role: age of the oldest work not yet stored."""
        return {role: target.lag_s() for role, target in self._targets.items()}

    @property
    def held_bytes(self) -> int:
        """Estimated memory of the partials queued and not yet stored on
        every target that has them (PendingPartial.nbytes, each once)."""
        return self._held_bytes

    def problems(self) -> list[str]:
        """One line per step failing now: storing on a backend, a worker that
        failed and was restarted, deleting stored segments. Empty when healthy."""
        found = []
        for role, target in self._targets.items():
            if (failing := target.failing) is not None:
                found.append(
                    f"backend {role}: storing failed for {failing.age_s():.0f} s "
                    f"({failing.attempts} attempts, {len(target.queue)} segments queued): "
                    f"{describe_error(failing.error)}"
                )
            if (crashed := target.crashed) is not None:
                found.append(
                    f"backend {role}: delivery worker restarted after "
                    f"{describe_error(crashed.error)} (restarts: {crashed.attempts})"
                )
        return found + self._cleanup.problems()

    def start(self) -> None:
        for target in self._targets.values():
            target.task = asyncio.create_task(
                keep_running(
                    f"delivery to {target.role}",
                    functools.partial(self._work, target),
                    on_failure=functools.partial(self._worker_failed, target),
                ),
                name=f"deliver-{target.role}",
            )
        self._cleanup.start()

    async def submit(self, segment: SegmentId, parts: Mapping[str, list[PendingPartial]]) -> None:
        """Queue a segment's work per target; targets without work are done."""
        roles = {role for role, pending in parts.items() if pending}
        if not roles:
            await self._cleanup.stored(segment)
            return
        nbytes = _distinct_bytes([parts[role] for role in roles])
        self._outstanding[segment] = _Outstanding(set(roles), nbytes)
        self._held_bytes += nbytes
        for role in sorted(roles, key=list(self._targets).index):
            target = self._targets[role]
            target.queue.append(_Work(segment, parts[role]))
            target.idle.clear()
            target.wake.set()

    def withdraw(self, writer: str) -> int:
        """Drop the work of ``writer`` not stored yet (a Kafka partition that
        moved to another replica, which replays it): queued work leaves the
        queues, and work being stored is given up before its next attempt.
        Returns the number of segments dropped."""
        dropped: set[SegmentId] = set()
        for target in self._targets.values():
            for work in target.queue:
                if work.segment[0] == writer:
                    work.withdrawn = True
                    dropped.add(work.segment)
            head = target.queue[0] if target.queue and target.storing else None
            target.queue = deque(w for w in target.queue if not w.withdrawn or w is head)
            target.wake.set()
        for segment in dropped:
            remaining = self._outstanding.pop(segment, None)
            if remaining is not None:
                self._held_bytes -= remaining.nbytes
        return len(dropped)

    async def drain(self) -> None:
        """Wait until every queued work item is stored (cleanup that fails is
        not waited for: the data is stored, only a file is left)."""
        for target in self._targets.values():
            await target.idle.wait()

    async def stop(self) -> None:
        """Stop the workers, then the cleanup (see SegmentCleanup.stop).
        Whatever is left stays in the log for the next start."""
        tasks = [target.task for target in self._targets.values()]
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._cleanup.stop()

    async def _work(self, target: _Target) -> None:
        while True:
            if not target.queue:
                target.idle.set()
                target.wake.clear()
                await target.wake.wait()
                continue
            work = target.queue[0]
            target.storing = True
            try:
                await self._store(target, work)
            finally:
                target.storing = False
            target.queue.popleft()
            target.crashed = None
            if work.withdrawn:
                continue
            remaining = self._outstanding.get(work.segment)
            if remaining is not None:
                remaining.targets.discard(target.role)
                if not remaining.targets:
                    del self._outstanding[work.segment]
                    self._held_bytes -= remaining.nbytes
                    await self._cleanup.stored(work.segment)

    def _worker_failed(self, target: _Target, error: Exception) -> None:
        self._restarts.add(1, {"task": f"deliver-{target.role}"})
        target.crashed = failed_again(target.crashed, error)

    async def _store(self, target: _Target, work: _Work) -> None:
        writer, epoch = work.segment
        delays = backoff()
        while not work.withdrawn:
            started = time.perf_counter()
            with self._tracer.start_as_current_span("metaas.ingest.flush") as span:
                span.set_attributes(
                    {
                        "metaas.flush.backend": target.role,
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
                    self._seconds.record(time.perf_counter() - started, {"backend": target.role})
                    self._rows.add(rows, {"backend": target.role})
                    if target.failing is not None:
                        log.info("backend %s stores again", target.role)
                    target.failing = None
                    return
            self._errors.add(1, {"backend": target.role})
            target.failing = failed_again(target.failing, failure)
            delay = next(delays)
            log.warning(
                "storing segment %s-%d on %s failed: %r; retrying in %.2fs",
                writer,
                epoch,
                target.role,
                failure,
                delay,
            )
            await asyncio.sleep(delay)

    def _observe_lag(self, _options: CallbackOptions) -> Iterable[Observation]:
        for role, target in self._targets.items():
            yield Observation(target.lag_s(), {"backend": role})

    def _observe_backlog(self, _options: CallbackOptions) -> Iterable[Observation]:
        for role, target in self._targets.items():
            yield Observation(len(target.queue), {"backend": role})


def _distinct_bytes(parts: list[list[PendingPartial]]) -> int:
    """Estimated memory of the partials in ``parts``; one that several
    targets share is one object, counted once."""
    if len(parts) == 1:
        return sum(p.nbytes for p in parts[0])
    seen: set[int] = set()
    total = 0
    for pending in parts:
        for partial in pending:
            if id(partial) not in seen:
                seen.add(id(partial))
                total += partial.nbytes
    return total
