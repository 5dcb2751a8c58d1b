from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from metaas.server.config import (
    CodecConfig,
    ConfigError,
    IngestConfig,
    MigrationConfig,
    RetentionConfig,
    ServerConfig,
)
from metaas.server.storage.sqlite import SqliteConfig
from metaas.server.telemetry import from_environment


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: ServerConfig(listen="localhost"), "METAAS_LISTEN"),
        (lambda: ServerConfig(listen="127.0.0.1:99999"), "METAAS_LISTEN"),
        (lambda: IngestConfig(flush_interval_s=0), "METAAS_FLUSH_INTERVAL_S"),
        (lambda: RetentionConfig(days=0), "METAAS_RETENTION_DAYS"),
        (lambda: SqliteConfig.from_url("sqlite://host/x.db"), "storage"),
        (lambda: SqliteConfig.from_url("sqlite:///x.db?synchronous=SOMETIMES"), "synchronous"),
        (lambda: SqliteConfig.from_url("sqlite:///x.db?cache=big"), "storage"),
        (lambda: from_environment({"OTEL_TRACES_EXPORTER": "zipkin"}), "OTEL_TRACES_EXPORTER"),
        (lambda: MigrationConfig(guard_error_rate=2.0), "METAAS_GUARD_ERROR_RATE"),
        (lambda: MigrationConfig(shadow_timeout_s=0), "shadow timeout"),
        (lambda: CodecConfig(compression="lz4"), "METAAS_COMPRESSION"),
    ],
)
def test_bad_values_name_the_setting_and_what_it_accepts(build: object, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build()  # type: ignore[operator]
    assert named in str(caught.value)
    assert "expected" in str(caught.value)


def test_sqlite_urls() -> None:
    assert SqliteConfig.from_url("sqlite:///./data/metaas.db").path == Path("data/metaas.db")
    assert SqliteConfig.from_url("sqlite:////var/lib/m.db").path == Path("/var/lib/m.db")
    assert SqliteConfig.from_url("sqlite:///m.db?synchronous=full").synchronous == "FULL"


def test_loopback_detection() -> None:
    assert ServerConfig(listen="127.0.0.1:1").is_loopback
    assert ServerConfig(listen="[::1]:1").is_loopback
    assert ServerConfig(listen="localhost:1").is_loopback
    assert not ServerConfig(listen="0.0.0.0:1").is_loopback


def test_telemetry_from_standard_variables() -> None:
    off = from_environment({})
    assert isinstance(off.tracer_provider, TracerProvider)
    console = from_environment(
        {
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_SERVICE_NAME": "metaas-test",
        }
    )
    provider = console.tracer_provider
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] == "metaas-test"
    processors = provider._active_span_processor._span_processors
    assert len(processors) == 1
    console.shutdown()
    off.shutdown()
    disabled = from_environment({"OTEL_SDK_DISABLED": "true"})
    assert not isinstance(disabled.tracer_provider, TracerProvider)
