"""Bounds on concurrent work: past them, callers are told to come back later
instead of queueing without limit.

Two bounds apply to every RPC: the server's in-flight limit, and each
caller's share of it, so one tenant holding many calls open (idle streams,
slow queries) cannot lock the others out. Request bytes held at once are
bounded too, reserved before a message is parsed (see api/intake.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from opentelemetry import metrics

from metaas.server.api.errors import RequestError

RETRY_AFTER_S = 0.2


class Admission:
    def __init__(
        self,
        limit: int,
        meter: metrics.Meter,
        *,
        per_caller: int | None = None,
        max_bytes: int = 1 << 62,
    ) -> None:
        self._limit = limit
        self._per_caller = min(per_caller or limit, limit)
        self._inflight = 0
        self._by_caller: Counter[str] = Counter()
        self.max_bytes = max_bytes
        self.bytes_held = 0
        self._rejected = meter.create_counter(
            "metaas.rpc.rejected", unit="{request}", description="RPCs refused for overload"
        )

    @contextmanager
    def admit(self, method: str, caller: str) -> Iterator[None]:
        """Hold one in-flight slot for ``caller`` (a principal's name) for the
        duration of the block; RESOURCE_EXHAUSTED when either bound is hit."""
        if self._inflight >= self._limit:
            raise self._refuse(
                method,
                "server",
                f"{self._inflight} requests in flight (limit {self._limit}); retry shortly",
            )
        held = self._by_caller[caller]
        if held >= self._per_caller:
            raise self._refuse(
                method,
                "caller",
                f"this caller has {held} requests in flight (limit "
                f"{self._per_caller} per caller, --max-inflight-per-caller); retry shortly",
            )
        self._inflight += 1
        self._by_caller[caller] = held + 1
        try:
            yield
        finally:
            self._inflight -= 1
            remaining = self._by_caller[caller] - 1
            if remaining:
                self._by_caller[caller] = remaining
            else:
                del self._by_caller[caller]

    def reserve_bytes(self, size: int) -> bool:
        """Hold ``size`` request bytes, or say no (nothing held). A message
        larger than the whole budget is still let in when nothing else is
        held: the transport cap bounds it."""
        if self.bytes_held and self.bytes_held + size > self.max_bytes:
            self._rejected.add(1, {"metaas.limit": "bytes"})
            return False
        self.bytes_held += size
        return True

    def release_bytes(self, size: int) -> None:
        self.bytes_held -= size

    def _refuse(self, method: str, bound: str, message: str) -> RequestError:
        self._rejected.add(1, {"rpc.method": method, "metaas.limit": bound})
        return RequestError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, message, retry_after_s=RETRY_AFTER_S
        )
