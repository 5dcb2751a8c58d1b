"""Typed, validated configuration, one frozen dataclass per component.

Values come from CLI flags or ``METAAS_*`` environment variables (the CLI maps
both onto :func:`load`) and are validated once at start-up: a bad value fails
fast with a message naming the setting and what it accepts.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

DAY_MS: Final = 86_400_000
MAX_PROJECTIONS: Final = 8
# The label names a write accepts (api/validation.py).
_LABEL_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


class ConfigError(ValueError):
    """A setting has a value outside what it accepts."""

    def __init__(self, setting: str, value: object, accepted: str) -> None:
        super().__init__(f"invalid {setting} {value!r}: expected {accepted}")
        self.setting = setting


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    reflection: bool = True
    # Seconds SIGTERM waits for in-flight RPCs before the final flush.
    shutdown_grace_s: float = 10.0
    # gRPC transport cap on a received message: gRPC refuses larger ones with
    # RESOURCE_EXHAUSTED before reading them whole. Just above the
    # per-request limit (LimitsConfig.max_request_bytes), so requests a little
    # over that limit still get a field-level error.
    max_receive_message_bytes: int = 17 * 1024 * 1024
    # Responses (a query's result) may be larger than requests.
    max_send_message_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError("METAAS_LISTEN / --listen", self.listen, "HOST:PORT")
        if self.shutdown_grace_s < 0:
            raise ConfigError("shutdown grace", self.shutdown_grace_s, "seconds >= 0")

    @property
    def is_loopback(self) -> bool:
        host = self.listen.rpartition(":")[0].strip("[]")
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """TLS, mutual TLS and bearer tokens. With none of them the server must
    listen on loopback only, unless ``insecure`` says otherwise."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    auth_tokens: Path | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(
                "--tls-cert / --tls-key", self.tls_cert or self.tls_key, "both or neither"
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError(
                "--tls-client-ca", self.tls_client_ca, "a server certificate too (--tls-cert)"
            )
        for setting, path in (
            ("METAAS_TLS_CERT / --tls-cert", self.tls_cert),
            ("METAAS_TLS_KEY / --tls-key", self.tls_key),
            ("METAAS_TLS_CLIENT_CA / --tls-client-ca", self.tls_client_ca),
            ("METAAS_AUTH_TOKENS / --auth-tokens", self.auth_tokens),
        ):
            if path is not None and not path.is_file():
                raise ConfigError(setting, str(path), "a readable file")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def authenticates(self) -> bool:
        """Whether callers must prove who they are (token or client cert)."""
        return self.auth_tokens is not None or self.tls_client_ca is not None


@dataclass(frozen=True, slots=True)
class IngestConfig:
    wal_dir: Path = Path("data/wal")
    # Acknowledged samples become visible to queries within this many seconds.
    flush_interval_s: float = 10.0
    # How long a request's idempotency key is remembered (it survives restarts).
    idempotency_window_s: float = 600.0
    # Memory for remembered keys (key, caller, fingerprint and answer). When
    # full, new keyed writes are refused with RESOURCE_EXHAUSTED; a key is
    # never forgotten before its window ends.
    idempotency_max_bytes: int = 256 * 1024 * 1024
    # Minutes older than this (by sample time) leave memory after their flush;
    # a late sample for them is merged into the stored row instead.
    hot_minutes: int = 3
    fsync: bool = True
    # Past these bounds writes get UNAVAILABLE with a retry hint instead of
    # memory or disk growing without limit while storage is behind.
    max_backlog_bytes: int = 1024 * 1024 * 1024
    max_aggregates: int = 2_000_000
    # Estimated memory of the aggregates being built or waiting to be stored:
    # past it a backfill waits for storage instead of piling up in memory.
    max_aggregate_bytes: int = 512 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 0.05 <= self.flush_interval_s <= 3600:
            raise ConfigError(
                "METAAS_FLUSH_INTERVAL_S / --flush-interval-s",
                self.flush_interval_s,
                "seconds between 0.05 and 3600",
            )
        if self.idempotency_window_s <= 0:
            raise ConfigError("idempotency window", self.idempotency_window_s, "seconds > 0")
        if self.idempotency_max_bytes < 1024:
            raise ConfigError(
                "METAAS_IDEMPOTENCY_MAX_BYTES / --idempotency-max-bytes",
                self.idempotency_max_bytes,
                "bytes >= 1024",
            )
        if self.max_aggregate_bytes < 65536:
            raise ConfigError(
                "METAAS_MAX_AGGREGATE_BYTES / --max-aggregate-bytes",
                self.max_aggregate_bytes,
                "bytes >= 65536",
            )
        if self.hot_minutes < 1:
            raise ConfigError("hot minutes", self.hot_minutes, "an integer >= 1")


@dataclass(frozen=True, slots=True)
class QueryConfig:
    # Hours starting before this are read from minutes, never from hourly
    # rollups: for data stored before rollups existed and not yet rebuilt
    # (`metaas rollups rebuild`). 0: every hour has its rollup.
    rollups_from_ms: int = 0

    def __post_init__(self) -> None:
        if self.rollups_from_ms < 0:
            raise ConfigError("METAAS_ROLLUPS_FROM / --rollups-from", self.rollups_from_ms, ">= 0")


@dataclass(frozen=True, slots=True)
class ViewsConfig:
    """Aggregates kept at ingest beside each series' partials, for the
    queries dashboards ask (see docs/architecture.md, "Views"): the whole
    metric merged, always, and one projection per label named here."""

    projections: tuple[str, ...] = ("status",)
    # Views hold data from this time on (Unix ms): a query reads series for
    # the time before it. Set it to the upgrade time on data stored before
    # views existed, until `metaas views rebuild` has run for every app.
    from_ms: int = 0

    def __post_init__(self) -> None:
        if len(self.projections) > MAX_PROJECTIONS or len(set(self.projections)) != len(
            self.projections
        ):
            raise ConfigError(
                "METAAS_VIEWS / --views",
                ",".join(self.projections),
                f"at most {MAX_PROJECTIONS} distinct label names, or none",
            )
        for name in self.projections:
            if not _LABEL_NAME.fullmatch(name):
                raise ConfigError(
                    "METAAS_VIEWS / --views",
                    name,
                    "label names (a letter or _, then letters, digits and _ . -, up to 64 "
                    "characters), comma-separated, or none",
                )
        if self.from_ms < 0:
            raise ConfigError("METAAS_VIEWS_FROM / --views-from", self.from_ms, ">= 0")

    @classmethod
    def parse(cls, text: str, from_ms: int = 0) -> ViewsConfig:
        """``--views``: comma-separated label names, or ``none``."""
        names = [n.strip() for n in text.split(",") if n.strip()]
        if names == ["none"]:
            names = []
        return cls(tuple(names), from_ms)


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    days: int = 30

    def __post_init__(self) -> None:
        if not 1 <= self.days <= 3650:
            raise ConfigError("METAAS_RETENTION_DAYS / --retention-days", self.days, "1..3650")

    @property
    def retention_ms(self) -> int:
        return self.days * DAY_MS


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Per-request limits enforced by validation."""

    max_name_length: int = 128
    max_labels: int = 16
    max_label_name_length: int = 64
    max_label_value_length: int = 256
    max_series_per_request: int = 10_000
    max_samples_per_request: int = 500_000
    max_request_bytes: int = 16 * 1024 * 1024
    max_idempotency_key_length: int = 128
    future_tolerance_ms: int = 5 * 60_000
    max_points_per_series: int = 11_000
    # Stats one query may ask for, and values (buckets x stats x groups) one
    # answer may hold; both are checked before anything is computed.
    max_stats: int = 32
    max_result_values: int = 2_000_000
    # Concurrent RPCs past this get RESOURCE_EXHAUSTED with a retry hint.
    max_inflight_requests: int = 512
    # The share of max_inflight_requests one caller (token, certificate or,
    # without authentication, anyone) may hold, so one tenant cannot lock
    # out the others.
    max_inflight_per_caller: int = 128
    # Request bytes received and not yet answered, over all RPCs: past it a
    # message is refused before it is parsed.
    max_inflight_bytes: int = 256 * 1024 * 1024
    # A WriteStream with no message for this long is ended.
    stream_idle_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_inflight_per_caller < 1:
            raise ConfigError(
                "METAAS_MAX_INFLIGHT_PER_CALLER / --max-inflight-per-caller",
                self.max_inflight_per_caller,
                "an integer >= 1",
            )
        if self.max_inflight_bytes < self.max_request_bytes:
            raise ConfigError(
                "METAAS_MAX_INFLIGHT_BYTES / --max-inflight-bytes",
                self.max_inflight_bytes,
                f"bytes >= the largest request ({self.max_request_bytes})",
            )
        if not 0 < self.stream_idle_timeout_s <= 86_400:
            raise ConfigError(
                "METAAS_STREAM_IDLE_TIMEOUT_S / --stream-idle-timeout-s",
                self.stream_idle_timeout_s,
                "seconds in (0, 86400]",
            )


@dataclass(frozen=True, slots=True)
class CodecConfig:
    """Item compression: ``METAAS_COMPRESSION`` (zstd or gzip) applies to
    items whose encoding exceeds ``METAAS_COMPRESSION_THRESHOLD_BYTES``
    (default 400 KB, DynamoDB's item limit)."""

    compression: str = "zstd"
    threshold_bytes: int = 400 * 1024
    zstd_level: int = 3
    gzip_level: int = 6
    # The distribution encoding written (``METAAS_DISTRIBUTION_ENCODING``):
    # 2, compact; 1, what releases before it wrote, for a rolling upgrade
    # while they still read the same store. Both are always read.
    distribution_encoding: int = 2

    def __post_init__(self) -> None:
        if self.distribution_encoding not in (1, 2):
            raise ConfigError(
                "METAAS_DISTRIBUTION_ENCODING / --distribution-encoding",
                self.distribution_encoding,
                "1 or 2",
            )
        if self.compression not in ("zstd", "gzip"):
            raise ConfigError(
                "METAAS_COMPRESSION / --compression", self.compression, "zstd or gzip"
            )
        if self.threshold_bytes < 0:
            raise ConfigError(
                "METAAS_COMPRESSION_THRESHOLD_BYTES / --compression-threshold-bytes",
                self.threshold_bytes,
                "bytes >= 0",
            )


@dataclass(frozen=True, slots=True)
class MigrationConfig:
    """Migration from ``METAAS_STORAGE`` (old) to ``METAAS_MIGRATION_TARGET``
    (new), staged per app by the flags in ``METAAS_FLAGS``."""

    target_url: str | None = None
    flags_file: Path | None = None
    flags_provider: str | None = None
    # A shadow read never delays an answer by more than this.
    shadow_timeout_s: float = 0.25
    # Worker processes for shadow reads (0: on the serving event loop).
    shadow_workers: int = 0
    relative_tolerance: float = 1e-9
    # The newest minutes may differ while both backends catch up; not compared.
    ignore_newest_minutes: int = 2
    window_s: float = 300.0
    # In live and rampdown, reads fall back to the old backend for an app when,
    # over the window and with at least guard_min_samples, the new one errs or
    # disagrees more often than this.
    guard_error_rate: float = 0.05
    guard_mismatch_rate: float = 0.05
    guard_min_samples: int = 20

    def __post_init__(self) -> None:
        if self.shadow_timeout_s <= 0:
            raise ConfigError("shadow timeout", self.shadow_timeout_s, "seconds > 0")
        if not 0 <= self.relative_tolerance < 1:
            raise ConfigError("compare tolerance", self.relative_tolerance, "0 <= t < 1")
        if not 0 <= self.shadow_workers <= 64:
            raise ConfigError("METAAS_SHADOW_WORKERS", self.shadow_workers, "0 to 64")
        if self.window_s <= 0:
            raise ConfigError("METAAS_MIGRATION_WINDOW_S", self.window_s, "seconds > 0")
        if self.guard_min_samples < 1:
            raise ConfigError("METAAS_GUARD_MIN_SAMPLES", self.guard_min_samples, ">= 1")
        if self.ignore_newest_minutes < 0:
            raise ConfigError("ignore newest minutes", self.ignore_newest_minutes, ">= 0")
        for name, rate in (
            ("METAAS_GUARD_ERROR_RATE / --guard-error-rate", self.guard_error_rate),
            ("METAAS_GUARD_MISMATCH_RATE / --guard-mismatch-rate", self.guard_mismatch_rate),
        ):
            if not 0 < rate <= 1:
                raise ConfigError(name, rate, "a fraction in (0, 1]")

    @property
    def enabled(self) -> bool:
        return self.target_url is not None


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``metaas serve`` needs."""

    storage_url: str = "sqlite:///./data/metaas.db"
    server: ServerConfig = field(default_factory=ServerConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    migration: MigrationConfig = field(default_factory=MigrationConfig)

    def __post_init__(self) -> None:
        if (
            not self.server.is_loopback
            and not self.security.authenticates
            and not self.security.insecure
        ):
            raise ConfigError(
                "METAAS_LISTEN / --listen",
                self.server.listen,
                "a loopback address while no authentication is configured "
                "(--auth-tokens or --tls-client-ca); pass --insecure to serve "
                "unauthenticated on the network",
            )
