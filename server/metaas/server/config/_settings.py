"""Everything ``metaas serve`` needs, made of the components' settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from metaas.server.config._data import (
    CodecConfig,
    IngestConfig,
    QueryConfig,
    RetentionConfig,
    ViewsConfig,
)
from metaas.server.config._declaration import ConfigError, build, setting, setting_of
from metaas.server.config._kafka import KafkaConfig
from metaas.server.config._migration import MigrationConfig
from metaas.server.config._serving import LimitsConfig, SecurityConfig, ServerConfig


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``metaas serve`` needs."""

    storage_url: str = setting(
        "sqlite:///./data/metaas.db",
        "--storage",
        "METAAS_STORAGE",
        "Storage URL: sqlite:///path.db, cassandra://host:port/keyspace or "
        "dynamodb://table?region=... (see the README).",
    )
    server: ServerConfig = field(default_factory=ServerConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    migration: MigrationConfig = field(default_factory=MigrationConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)

    def __post_init__(self) -> None:
        if (
            not self.server.is_loopback
            and not self.security.authenticates
            and not self.security.insecure
        ):
            raise ConfigError(
                setting_of(ServerConfig, "listen").label,
                self.server.listen,
                "a loopback address while no authentication is configured "
                "(--auth-tokens or --tls-client-ca); pass --insecure to serve "
                "unauthenticated on the network",
            )

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Settings:
        """Settings from parsed options, keyed by :attr:`Setting.name`."""
        return build(cls, values)
