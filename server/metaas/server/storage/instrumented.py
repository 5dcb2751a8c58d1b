"""A Storage wrapper adding a client span and latency/error metrics to every
backend call. It implements the same Protocol as what it wraps."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import TypeVar

from opentelemetry.trace import SpanKind, Status, StatusCode

from metaas.server.model import Labels, Partial, PartialKey, Resolution, SeriesKey
from metaas.server.storage.base import Storage
from metaas.server.storage.errors import StorageError
from metaas.server.telemetry import Telemetry

_T = TypeVar("_T")
# (role, backend, operation, seconds, failed)
CallObserver = Callable[[str, str, str, float, bool], None]


class InstrumentedStorage:
    """Spans ``<backend> <operation>`` with ``db.system``, ``db.operation``
    and the outcome; histogram ``metaas.storage.duration`` and counter
    ``metaas.storage.errors`` by backend and operation."""

    def __init__(
        self,
        inner: Storage,
        telemetry: Telemetry,
        *,
        role: str | None = None,
        on_call: CallObserver | None = None,
    ) -> None:
        self._inner = inner
        self._role = role
        self._on_call = on_call
        self._tracer = telemetry.tracer
        meter = telemetry.meter
        self._duration = meter.create_histogram(
            "metaas.storage.duration", unit="s", description="Backend call latency"
        )
        self._errors = meter.create_counter(
            "metaas.storage.errors", unit="{error}", description="Failed backend calls"
        )

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def inner(self) -> Storage:
        return self._inner

    async def write_partials(self, partials: Sequence[Partial]) -> None:
        await self._call("write_partials", self._inner.write_partials(partials), len(partials))

    async def read_partials(
        self,
        app: str,
        metric: str,
        start_ms: int,
        end_ms: int,
        resolution: Resolution = Resolution.MINUTE,
        series: Collection[SeriesKey] | None = None,
    ) -> Sequence[Partial]:
        return await self._call(
            "read_partials",
            self._inner.read_partials(app, metric, start_ms, end_ms, resolution, series),
        )

    async def find_series(
        self, app: str, metric: str, start_ms: int, end_ms: int, matchers: Labels
    ) -> Sequence[SeriesKey]:
        return await self._call(
            "find_series", self._inner.find_series(app, metric, start_ms, end_ms, matchers)
        )

    async def get_partials(self, keys: Sequence[PartialKey]) -> Mapping[PartialKey, Partial]:
        return await self._call("get_partials", self._inner.get_partials(keys), len(keys))

    async def list_series(
        self, app: str, start_ms: int, end_ms: int, metric: str | None = None
    ) -> Sequence[SeriesKey]:
        return await self._call(
            "list_series", self._inner.list_series(app, start_ms, end_ms, metric)
        )

    async def close(self) -> None:
        await self._inner.close()

    async def _call(self, operation: str, call: Awaitable[_T], items: int | None = None) -> _T:
        system = self._inner.name
        attributes = {"db.system": system, "db.operation": operation}
        if self._role is not None:
            attributes["metaas.backend.role"] = self._role
        with self._tracer.start_as_current_span(
            f"{system} {operation}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            if items is not None:
                span.set_attribute("metaas.storage.items", items)
            started = time.perf_counter()
            outcome = "ok"
            try:
                return await call
            except StorageError as error:
                if not error.backend:  # raised outside a driver call (Corrupt)
                    error.backend = system
                outcome = "retryable_error" if error.is_retryable else "error"
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                self._errors.add(1, {**attributes, "outcome": outcome})
                raise
            except BaseException as error:
                outcome = "error" if isinstance(error, Exception) else "cancelled"
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                raise
            finally:
                elapsed = time.perf_counter() - started
                span.set_attribute("metaas.storage.outcome", outcome)
                self._duration.record(elapsed, {**attributes, "outcome": outcome})
                if self._on_call is not None and outcome != "cancelled":
                    self._on_call(self._role or system, system, operation, elapsed, outcome != "ok")
