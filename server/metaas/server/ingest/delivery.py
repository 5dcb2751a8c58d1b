"""Delivery of sealed log segments' aggregates to every write target.

Each target (a storage backend) has its own FIFO queue and worker. Work for a
target is stored in log order, retried with backoff until the backend takes
it; a slow or failing backend neither blocks nor loses the other's writes.
A segment may be deleted once every target that had work from it has stored
that work (reported through ``on_complete``). FIFO order per target keeps the
epoch invariant of docs/architecture.md: when segment ``e`` is stored on a
target, every earlier segment with work for that target is stored there too.

Queued work is memory: ``held_bytes`` estimates it (each partial counted
once, however many targets it goes to) until every target stores it, so
admission can push writes back while a backend is behind.

Deleting is cleanup, not delivery: a failed ``on_complete`` is retried with
backoff by its own task while later segments keep being stored, and every
worker runs under ``keep_running``, so no failed step stops delivery for good.
Failures are counted in metrics and described by ``problems()``.
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
from typing import Final

from opentelemetry.metrics import CallbackOptions, Observation

from metaas.server.ingest.aggregator import PendingPartial
from metaas.server.ingest.partials import write_pending
from metaas.server.retry import backoff, describe_error, keep_running
from metaas.server.storage.base import Storage
from metaas.server.storage.errors import StorageError
from metaas.server.telemetry import Telemetry

log = logging.getLogger(__name__)
SegmentId = tuple[str, int]  # (writer generation, epoch)
# Retries of a failed cleanup: soon at first, then at most this far apart.
_CLEANUP_BASE_S: Final = 0.2
_CLEANUP_CAP_S: Final = 5.0


@dataclass(slots=True)
class _Failure:
    """A step failing since ``since`` (monotonic seconds), and its latest error."""

    error: Exception
    since: float = field(default_factory=time.monotonic)
    attempts: int = 1

    def again(self, error: Exception) -> None:
        self.error = error
        self.attempts += 1

    def age_s(self) -> float:
        return time.monotonic() - self.since


@dataclass(slots=True)
class _Work:
    segment: SegmentId
    pending: list[PendingPartial]
    queued_at: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class _Outstanding:
    """A queued segment: the targets that still have to store its work, and
    the estimated memory of its partials, held until they all have."""

    targets: set[str]
    nbytes: int


class _Target:
    def __init__(self, name: str, storage: Storage) -> None:
        self.name = name
        self.storage = storage
        self.queue: deque[_Work] = deque()
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.task: asyncio.Task[None] | None = None
        self.failing: _Failure | None = None  # storing the head of the queue
        self.crashed: _Failure | None = None  # the worker itself, until it stores again

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
        self._outstanding: dict[SegmentId, _Outstanding] = {}
        self._held_bytes = 0
        # Segments stored everywhere whose cleanup failed, in retry order.
        self._uncleaned: dict[SegmentId, _Failure] = {}
        self._cleanup_error: Exception | None = None  # the latest failure
        self._cleanup_wake = asyncio.Event()
        self._cleanup_task: asyncio.Task[None] | None = None
        self._cleanup_crashed: _Failure | None = None
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
        self._cleanup_errors = meter.create_counter(
            "metaas.ingest.cleanup.errors",
            unit="{error}",
            description="Failed attempts to delete a log segment stored on every backend",
        )
        self._restarts = meter.create_counter(
            "metaas.ingest.task.restarts",
            unit="{restart}",
            description="Background ingest tasks restarted after an unexpected error",
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
        meter.create_observable_gauge(
            "metaas.ingest.cleanup.pending",
            callbacks=[self._observe_uncleaned],
            unit="{segment}",
            description="Log segments stored on every backend that could not be deleted yet",
        )

    def lag_s(self) -> dict[str, float]:
        return {name: target.lag_s() for name, target in self._targets.items()}

    @property
    def held_bytes(self) -> int:
        """Estimated memory of the partials queued and not yet stored on
        every target that has them (PendingPartial.nbytes, each once)."""
        return self._held_bytes

    def problems(self) -> list[str]:
        """One line per step failing now: storing on a backend, a worker that
        failed and was restarted, deleting stored segments. Empty when healthy."""
        found = []
        for name, target in self._targets.items():
            if (failing := target.failing) is not None:
                found.append(
                    f"backend {name}: storing failed for {failing.age_s():.0f} s "
                    f"({failing.attempts} attempts, {len(target.queue)} segments queued): "
                    f"{describe_error(failing.error)}"
                )
            if (crashed := target.crashed) is not None:
                found.append(
                    f"backend {name}: delivery worker restarted after "
                    f"{describe_error(crashed.error)} (restarts: {crashed.attempts})"
                )
        if self._uncleaned and self._cleanup_error is not None:
            oldest = max(failure.age_s() for failure in self._uncleaned.values())
            found.append(
                f"wal: {len(self._uncleaned)} stored segments could not be deleted for "
                f"{oldest:.0f} s: {describe_error(self._cleanup_error)}"
            )
        if (crashed := self._cleanup_crashed) is not None:
            found.append(
                f"wal: cleanup task restarted after {describe_error(crashed.error)} "
                f"(restarts: {crashed.attempts})"
            )
        return found

    def start(self) -> None:
        for target in self._targets.values():
            target.task = asyncio.create_task(
                keep_running(
                    f"delivery to {target.name}",
                    functools.partial(self._work, target),
                    on_failure=functools.partial(self._worker_failed, target),
                ),
                name=f"deliver-{target.name}",
            )
        self._cleanup_task = asyncio.create_task(
            keep_running("log segment cleanup", self._clean_up, on_failure=self._cleanup_failed),
            name="wal-cleanup",
        )

    async def submit(self, segment: SegmentId, parts: Mapping[str, list[PendingPartial]]) -> None:
        """Queue a segment's work per target; targets without work are done."""
        names = {name for name, pending in parts.items() if pending}
        if not names:
            await self._complete(segment)
            return
        nbytes = _distinct_bytes([parts[name] for name in names])
        self._outstanding[segment] = _Outstanding(set(names), nbytes)
        self._held_bytes += nbytes
        for name in sorted(names, key=list(self._targets).index):
            target = self._targets[name]
            target.queue.append(_Work(segment, parts[name]))
            target.idle.clear()
            target.wake.set()

    async def drain(self) -> None:
        """Wait until every queued work item is stored (cleanup that fails is
        not waited for: the data is stored, only a file is left)."""
        for target in self._targets.values():
            await target.idle.wait()

    async def stop(self) -> None:
        """Stop the workers; give segments whose cleanup still fails one last
        attempt. Whatever is left stays in the log for the next start."""
        tasks = [target.task for target in self._targets.values()] + [self._cleanup_task]
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._uncleaned:
            await self._retry_cleanup()
        if self._uncleaned and self._cleanup_error is not None:
            log.warning(
                "%d stored log segments could not be deleted (%s); the next start "
                "replays them, which stores nothing twice",
                len(self._uncleaned),
                describe_error(self._cleanup_error),
            )

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
            target.crashed = None
            remaining = self._outstanding.get(work.segment)
            if remaining is not None:
                remaining.targets.discard(target.name)
                if not remaining.targets:
                    del self._outstanding[work.segment]
                    self._held_bytes -= remaining.nbytes
                    await self._complete(work.segment)

    def _worker_failed(self, target: _Target, error: Exception) -> None:
        self._restarts.add(1, {"task": f"deliver-{target.name}"})
        if target.crashed is None:
            target.crashed = _Failure(error)
        else:
            target.crashed.again(error)

    async def _complete(self, segment: SegmentId) -> None:
        """Clean up after a segment stored on every target that had work from
        it. Never raises: a failure is handed to the cleanup task."""
        try:
            await self._on_complete(segment)
        except Exception as error:  # noqa: BLE001 - retried by the cleanup task, reported
            self._cleanup_errors.add(1)
            self._cleanup_error = error
            if not self._uncleaned:
                log.warning(
                    "could not delete stored log segment %s-%d (%s); retrying with backoff "
                    "while later segments are delivered",
                    *segment,
                    describe_error(error),
                )
            self._uncleaned[segment] = _Failure(error)
            self._cleanup_wake.set()

    async def _clean_up(self) -> None:
        """Retry the cleanup of stored segments whose first attempt failed
        (say, the log directory turned append-only), with backoff while any
        still fails.

        A segment that is never deleted (this run stops first) is harmless:
        the next start replays it as deltas under its own writer and epoch,
        and docs/architecture.md's epoch rule skips every row whose epoch
        already covers it. Every row it touched has such an epoch on every
        target, since it was stored everywhere before its cleanup began, so
        a replay stores nothing twice."""
        delays = backoff(_CLEANUP_BASE_S, _CLEANUP_CAP_S)
        while True:
            if not self._uncleaned:
                self._cleanup_wake.clear()
                await self._cleanup_wake.wait()
                delays = backoff(_CLEANUP_BASE_S, _CLEANUP_CAP_S)
                continue
            await asyncio.sleep(next(delays))
            cleaned = await self._retry_cleanup()
            self._cleanup_crashed = None
            if cleaned and not self._uncleaned:
                log.info("stored log segments are deleted again (%d retried)", cleaned)

    async def _retry_cleanup(self) -> int:
        """Retry in order until one fails; return how many succeeded. The
        failed one moves to the end, so a single stuck segment does not hold
        back the others, and a cause shared by all (the directory) costs one
        attempt per round, not one per segment, on the log's only thread."""
        cleaned = 0
        for segment in list(self._uncleaned):
            try:
                await self._on_complete(segment)
            except Exception as error:  # noqa: BLE001 - retried, reported
                self._cleanup_errors.add(1)
                self._cleanup_error = error
                failure = self._uncleaned.pop(segment)
                failure.again(error)
                self._uncleaned[segment] = failure
                log.debug("deleting log segment %s-%d failed again: %r", *segment, error)
                break
            del self._uncleaned[segment]
            cleaned += 1
        if not self._uncleaned:
            self._cleanup_error = None
        return cleaned

    def _cleanup_failed(self, error: Exception) -> None:
        self._restarts.add(1, {"task": "wal-cleanup"})
        if self._cleanup_crashed is None:
            self._cleanup_crashed = _Failure(error)
        else:
            self._cleanup_crashed.again(error)

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
                    if target.failing is not None:
                        log.info("backend %s stores again", target.name)
                    target.failing = None
                    return
            self._errors.add(1, {"backend": target.name})
            if target.failing is None:
                target.failing = _Failure(failure)
            else:
                target.failing.again(failure)
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

    def _observe_uncleaned(self, _options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(len(self._uncleaned))


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
