"""Test doubles shared by the unit tests: clocks, a span and a meter that
record what they are given, and a gRPC servicer context."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, cast

import grpc
from opentelemetry import metrics
from opentelemetry.context import Context
from opentelemetry.util.types import AttributeValue

from tests.conformance.conftest import FixedClock

__all__ = [
    "Aborted",
    "FakeServicerContext",
    "FixedClock",
    "ManualClock",
    "RecordingCounter",
    "RecordingMeter",
    "RecordingSpan",
]


class ManualClock:
    """Monotonic seconds and wall-clock milliseconds that move only when told
    (``advance``); ``now_ms`` makes it a ``metaas.server.clock.Clock`` too."""

    def __init__(self, wall_ms: int, monotonic_s: float = 1_000.0) -> None:
        self._wall_ms = wall_ms
        self._monotonic_s = monotonic_s

    def monotonic(self) -> float:
        return self._monotonic_s

    def wall_ms(self) -> int:
        return self._wall_ms

    def now_ms(self) -> int:
        return self._wall_ms

    def advance(self, seconds: float) -> None:
        self._monotonic_s += seconds
        self._wall_ms += round(seconds * 1000)


class RecordingSpan:
    """A span that keeps every attribute set on it (the last value wins)."""

    def __init__(self) -> None:
        self.attributes: dict[str, AttributeValue] = {}

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        self.attributes.update(attributes)


class RecordingCounter(metrics.NoOpCounter):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.adds: list[tuple[float, dict[str, Any]]] = []

    def add(
        self,
        amount: float,
        attributes: Mapping[str, Any] | None = None,
        context: Context | None = None,
    ) -> None:
        self.adds.append((amount, dict(attributes or {})))


class RecordingMeter(metrics.NoOpMeter):
    """A meter whose counters remember each ``add``; other instruments do nothing."""

    def __init__(self) -> None:
        super().__init__("tests")
        self.counters: dict[str, RecordingCounter] = {}

    def create_counter(self, name: str, unit: str = "", description: str = "") -> metrics.Counter:
        return self.counters.setdefault(name, RecordingCounter(name))

    def adds(self, name: str) -> list[tuple[float, dict[str, Any]]]:
        """Every ``add`` to the counter ``name`` (none if it was never created)."""
        counter = self.counters.get(name)
        return [] if counter is None else counter.adds


class Aborted(Exception):
    """What ``FakeServicerContext.abort`` raises, as grpc's abort does."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing_metadata: tuple[tuple[str, str | bytes], ...],
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata

    def metadata(self, key: str) -> str | bytes | None:
        return next((v for k, v in self.trailing_metadata if k == key), None)


class FakeServicerContext:
    """The parts of ``grpc.aio.ServicerContext`` the server uses: the
    caller's metadata, its certificate names, its deadline, and ``abort``."""

    def __init__(
        self,
        *,
        metadata: Sequence[tuple[str, str | bytes]] = (),
        auth: Mapping[str, Sequence[bytes]] | None = None,
        time_remaining: float | None = None,
    ) -> None:
        self.metadata = tuple(metadata)
        self.auth = dict(auth or {})
        self.remaining = time_remaining

    @classmethod
    def bearer(cls, token: str, **options: Any) -> grpc.aio.ServicerContext[Any, Any]:
        """A context whose caller presents ``token``."""
        return cls(metadata=[("authorization", f"Bearer {token}")], **options).typed()

    def typed(self) -> grpc.aio.ServicerContext[Any, Any]:
        """This fake where a servicer context is expected."""
        return cast("grpc.aio.ServicerContext[Any, Any]", self)

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self.metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {key: list(values) for key, values in self.auth.items()}

    def time_remaining(self) -> float | None:
        return self.remaining

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> NoReturn:
        raise Aborted(code, details, tuple(trailing_metadata))
