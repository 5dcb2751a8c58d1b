"""Deleting log segments once every target that had work from them has
stored it.

Deleting is cleanup, not delivery: a failed deletion is retried with backoff
by its own task while later segments keep being stored, and that task runs
under ``keep_running``, so no failed step stops it for good. Failures are
counted in metrics and described by ``problems()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from opentelemetry.metrics import CallbackOptions, Counter, Meter, Observation

from metaas.server.ingest.wal import SegmentId
from metaas.server.retry import backoff, describe_error, keep_running

log = logging.getLogger(__name__)
# Retries of a failed deletion: soon at first, then at most this far apart.
_BASE_S: Final = 0.2
_CAP_S: Final = 5.0


@dataclass(slots=True)
class Failure:
    """A step failing since ``since`` (monotonic seconds), and its latest error."""

    error: Exception
    since: float = field(default_factory=time.monotonic)
    attempts: int = 1

    def again(self, error: Exception) -> None:
        self.error = error
        self.attempts += 1

    def age_s(self) -> float:
        return time.monotonic() - self.since


def failed_again(failure: Failure | None, error: Exception) -> Failure:
    """``failure`` with one more ``error``, or the first failure."""
    if failure is None:
        return Failure(error)
    failure.again(error)
    return failure


class SegmentCleanup:
    """Deletes stored segments through ``delete``; retries those whose
    deletion fails, in order, until they are gone or ``stop`` is called."""

    def __init__(
        self,
        delete: Callable[[SegmentId], Awaitable[None]],
        *,
        meter: Meter,
        restarts: Counter,
    ) -> None:
        self._delete = delete
        self._restarts = restarts
        # Segments whose deletion failed, in retry order.
        self._uncleaned: dict[SegmentId, Failure] = {}
        self._error: Exception | None = None  # the latest failure
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._crashed: Failure | None = None
        self._errors = meter.create_counter(
            "metaas.ingest.cleanup.errors",
            unit="{error}",
            description="Failed attempts to delete a log segment stored on every backend",
        )
        meter.create_observable_gauge(
            "metaas.ingest.cleanup.pending",
            callbacks=[self._observe_uncleaned],
            unit="{segment}",
            description="Log segments stored on every backend that could not be deleted yet",
        )

    def start(self) -> None:
        self._task = asyncio.create_task(
            keep_running("log segment cleanup", self._run, on_failure=self._task_failed),
            name="wal-cleanup",
        )

    async def stop(self) -> None:
        """Stop retrying; give segments whose deletion still fails one last
        attempt. Whatever is left stays in the log for the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._uncleaned:
            await self._retry()
        if self._uncleaned and self._error is not None:
            log.warning(
                "%d stored log segments could not be deleted (%s); the next start "
                "replays them, which stores nothing twice",
                len(self._uncleaned),
                describe_error(self._error),
            )

    async def stored(self, segment: SegmentId) -> None:
        """Delete a segment stored on every target that had work from it.
        Never raises: a failure is left to the retrying task."""
        try:
            await self._delete(segment)
        except Exception as error:  # noqa: BLE001 - retried by the task, reported
            self._errors.add(1)
            self._error = error
            if not self._uncleaned:
                log.warning(
                    "could not delete stored log segment %s-%d (%s); retrying with backoff "
                    "while later segments are delivered",
                    *segment,
                    describe_error(error),
                )
            self._uncleaned[segment] = Failure(error)
            self._wake.set()

    def problems(self) -> list[str]:
        found = []
        if self._uncleaned and self._error is not None:
            oldest = max(failure.age_s() for failure in self._uncleaned.values())
            found.append(
                f"wal: {len(self._uncleaned)} stored segments could not be deleted for "
                f"{oldest:.0f} s: {describe_error(self._error)}"
            )
        if (crashed := self._crashed) is not None:
            found.append(
                f"wal: cleanup task restarted after {describe_error(crashed.error)} "
                f"(restarts: {crashed.attempts})"
            )
        return found

    async def _run(self) -> None:
        """Retry the deletion of stored segments whose first attempt failed
        (say, the log directory turned append-only), with backoff while any
        still fails.

        A segment that is never deleted (this run stops first) is harmless:
        the next start replays it as deltas under its own writer and epoch,
        and docs/architecture.md's epoch rule skips every row whose epoch
        already covers it. Every row it touched has such an epoch on every
        target, since it was stored everywhere before its cleanup began, so
        a replay stores nothing twice."""
        delays = backoff(_BASE_S, _CAP_S)
        while True:
            if not self._uncleaned:
                self._wake.clear()
                await self._wake.wait()
                delays = backoff(_BASE_S, _CAP_S)
                continue
            await asyncio.sleep(next(delays))
            cleaned = await self._retry()
            self._crashed = None
            if cleaned and not self._uncleaned:
                log.info("stored log segments are deleted again (%d retried)", cleaned)

    async def _retry(self) -> int:
        """Retry in order until one fails; return how many succeeded. The
        failed one moves to the end, so a single stuck segment does not hold
        back the others, and a cause shared by all (the directory) costs one
        attempt per round, not one per segment, on the log's only thread."""
        cleaned = 0
        for segment in list(self._uncleaned):
            try:
                await self._delete(segment)
            except Exception as error:  # noqa: BLE001 - retried, reported
                self._errors.add(1)
                self._error = error
                self._uncleaned[segment] = failed_again(self._uncleaned.pop(segment), error)
                log.debug("deleting log segment %s-%d failed again: %r", *segment, error)
                break
            del self._uncleaned[segment]
            cleaned += 1
        if not self._uncleaned:
            self._error = None
        return cleaned

    def _task_failed(self, error: Exception) -> None:
        self._restarts.add(1, {"task": "wal-cleanup"})
        self._crashed = failed_again(self._crashed, error)

    def _observe_uncleaned(self, _options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(len(self._uncleaned))
