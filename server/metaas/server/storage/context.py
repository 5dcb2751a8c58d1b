"""What every backend is opened with, besides its URL."""

from __future__ import annotations

from dataclasses import dataclass, field

from metaas.server.clock import Clock, SystemClock
from metaas.server.config import CodecConfig
from metaas.server.telemetry import Telemetry, noop


@dataclass(frozen=True, slots=True)
class StorageContext:
    """Retention (reads never return older data; backends with TTL expire it),
    the clock, the item codec settings, and telemetry for per-call spans and
    metrics."""

    retention_ms: int
    clock: Clock = field(default_factory=SystemClock)
    codec: CodecConfig = field(default_factory=CodecConfig)
    telemetry: Telemetry = field(default_factory=noop)
