"""OpenTelemetry providers, built once at start-up and injected."""

from metaas.server.telemetry.providers import Telemetry, from_environment, noop

__all__ = ["Telemetry", "from_environment", "noop"]
