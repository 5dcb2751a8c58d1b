"""Tracer and meter providers from the standard ``OTEL_*`` variables.

- ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``: comma-separated
  ``otlp``, ``console`` or ``none``. Unset means ``otlp`` when an OTLP endpoint
  is configured (``OTEL_EXPORTER_OTLP_ENDPOINT`` or the per-signal variable),
  else ``none``.
- The OTLP exporter (gRPC) reads its endpoint, headers, certificates and
  timeouts from the standard variables itself.
- ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` name the resource;
  ``OTEL_SDK_DISABLED=true`` turns everything off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

from metaas.server.config import ConfigError

_INSTRUMENTATION = "metaas.server"
_EXPORTERS = ("otlp", "console", "none")


@dataclass(frozen=True, slots=True)
class Telemetry:
    tracer_provider: trace.TracerProvider
    meter_provider: metrics.MeterProvider

    @property
    def tracer(self) -> trace.Tracer:
        return self.tracer_provider.get_tracer(_INSTRUMENTATION)

    @property
    def meter(self) -> metrics.Meter:
        return self.meter_provider.get_meter(_INSTRUMENTATION)

    def shutdown(self) -> None:
        """Flush and stop exporters (no-op providers have nothing to do)."""
        for provider in (self.tracer_provider, self.meter_provider):
            shutdown = getattr(provider, "shutdown", None)
            if shutdown is not None:
                shutdown()


def noop() -> Telemetry:
    return Telemetry(trace.NoOpTracerProvider(), metrics.NoOpMeterProvider())


def from_environment(environ: Mapping[str, str] | None = None) -> Telemetry:
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return noop()
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "metaas")})

    tracer_provider = TracerProvider(resource=resource)
    for name in _exporters(env, "TRACES"):
        tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(name)))

    readers: list[MetricReader] = [
        PeriodicExportingMetricReader(_metric_exporter(name)) for name in _exporters(env, "METRICS")
    ]
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    return Telemetry(tracer_provider, meter_provider)


def _exporters(env: Mapping[str, str], signal: str) -> list[str]:
    variable = f"OTEL_{signal}_EXPORTER"
    configured = env.get(variable)
    if configured is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
            f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    names = [n.strip().lower() for n in configured.split(",") if n.strip()]
    for name in names:
        if name not in _EXPORTERS:
            raise ConfigError(variable, configured, ", ".join(_EXPORTERS))
    return [n for n in names if n != "none"]


def _span_exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _metric_exporter(name: str) -> MetricExporter:
    if name == "console":
        return ConsoleMetricExporter()
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter()
