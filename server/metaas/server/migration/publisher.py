"""The one seam through which shadow checks reach telemetry: the request's
span (given explicitly), counters and a log line. Diffs hold customer
values, so they go to the admin-only migration status, never to spans or
logs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from opentelemetry import metrics
from opentelemetry.util.types import AttributeValue

from metaas.server.migration.compare import Comparison

log = logging.getLogger(__name__)


class Span(Protocol):
    """What the publisher needs of a span (an OpenTelemetry span, or the
    RPC's span kept open until the comparison is published)."""

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None: ...


class Publisher:
    def __init__(self, meter: metrics.Meter) -> None:
        self._comparisons = meter.create_counter(
            "metaas.migration.comparisons", unit="{comparison}", description="Shadow comparisons"
        )
        self._mismatches = meter.create_counter(
            "metaas.migration.mismatches", unit="{comparison}", description="Inconsistent ones"
        )
        self._skipped = meter.create_counter(
            "metaas.migration.shadow_skipped",
            unit="{read}",
            description="Sampled shadow reads skipped: the shadow workers were saturated, "
            "or the served read failed or was cancelled",
        )

    def publish(self, comparison: Comparison, span: Span) -> None:
        span.set_attributes(
            {
                "metaas.compare.consistent": comparison.consistent,
                "metaas.compare.latency_delta_ms": comparison.latency_delta_ms,
                "metaas.compare.primary_backend": comparison.primary.backend,
                "metaas.compare.shadow_backend": comparison.candidate.backend,
                "metaas.compare.shadow_error": comparison.candidate.error is not None,
            }
        )
        self._comparisons.add(1, {"stage": comparison.stage, "consistent": comparison.consistent})
        if not comparison.consistent:
            self._mismatches.add(1, {"stage": comparison.stage})
            log.warning(
                "shadow mismatch: app %s metric %s (%d differences)",
                comparison.app,
                comparison.metric,
                len(comparison.diff),
            )

    def skipped(self, stage: str, reason: str, span: Span) -> None:
        """A sampled check that produced no comparison, and why."""
        span.set_attributes({"metaas.compare.skipped": reason})
        self._skipped.add(1, {"stage": stage, "reason": reason})
