"""A bound on concurrent RPCs: past it, callers are told to come back later
instead of queueing without limit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from opentelemetry import metrics

from metaas.server.api.errors import RequestError

RETRY_AFTER_S = 0.2


class Admission:
    def __init__(self, limit: int, meter: metrics.Meter) -> None:
        self._limit = limit
        self._inflight = 0
        self._rejected = meter.create_counter(
            "metaas.rpc.rejected", unit="{request}", description="RPCs refused for overload"
        )

    @property
    def inflight(self) -> int:
        return self._inflight

    @contextmanager
    def admit(self, method: str) -> Iterator[None]:
        if self._inflight >= self._limit:
            self._rejected.add(1, {"rpc.method": method})
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self._inflight} requests in flight (limit {self._limit}); retry shortly",
                retry_after_s=RETRY_AFTER_S,
            )
        self._inflight += 1
        try:
            yield
        finally:
            self._inflight -= 1
