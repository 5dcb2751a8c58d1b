"""The server's own settings: where it listens, who may call it, how much it takes."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from metaas.server.config._declaration import (
    READABLE_FILE,
    Accepts,
    ConfigError,
    Kind,
    Setting,
    at_least,
    between,
    one_of,
    setting,
    setting_of,
    validate,
)


def _is_host_port(listen: str) -> bool:
    host, _, port = listen.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


LOG_LEVEL: Final = Setting(
    "info",
    "--log-level",
    "METAAS_LOG_LEVEL",
    "How much the server logs.",
    accepts=one_of("debug", "info", "warning", "error"),
)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = setting(
        "127.0.0.1:50051",
        "--listen",
        "METAAS_LISTEN",
        "The address to serve gRPC on.",
        accepts=Accepts("HOST:PORT", _is_host_port),
    )
    reflection: bool = setting(
        True,
        "--reflection",
        "METAAS_REFLECTION",
        "Serve gRPC reflection (for grpcurl).",
        kind=Kind.SWITCH,
    )
    shutdown_grace_s: float = setting(
        10.0,
        "--shutdown-grace-s",
        "METAAS_SHUTDOWN_GRACE_S",
        "Seconds SIGTERM lets in-flight RPCs finish before the final flush.",
        kind=Kind.NUMBER,
        accepts=at_least(0, "seconds"),
    )
    # gRPC transport cap on a received message: gRPC refuses larger ones with
    # RESOURCE_EXHAUSTED before reading them whole. Just above the
    # per-request limit (LimitsConfig.max_request_bytes), so requests a little
    # over that limit still get a field-level error.
    max_receive_message_bytes: int = 17 * 1024 * 1024
    # Responses (a query's result) may be larger than requests.
    max_send_message_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        validate(self)

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

    tls_cert: Path | None = setting(
        None,
        "--tls-cert",
        "METAAS_TLS_CERT",
        "Server certificate (PEM); enables TLS.",
        kind=Kind.PATH,
        accepts=READABLE_FILE,
    )
    tls_key: Path | None = setting(
        None,
        "--tls-key",
        "METAAS_TLS_KEY",
        "Server private key (PEM).",
        kind=Kind.PATH,
        accepts=READABLE_FILE,
    )
    tls_client_ca: Path | None = setting(
        None,
        "--tls-client-ca",
        "METAAS_TLS_CLIENT_CA",
        "CA bundle for client certificates; enables mutual TLS.",
        kind=Kind.PATH,
        accepts=READABLE_FILE,
    )
    auth_tokens: Path | None = setting(
        None,
        "--auth-tokens",
        "METAAS_AUTH_TOKENS",
        "Access file: token hashes and certificate names, with their apps.",
        kind=Kind.PATH,
        accepts=READABLE_FILE,
    )
    insecure: bool = setting(
        False,
        "--insecure",
        "METAAS_INSECURE",
        "Allow a non-loopback --listen without authentication.",
        kind=Kind.FLAG,
    )

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(
                "METAAS_TLS_CERT / --tls-cert, METAAS_TLS_KEY / --tls-key",
                str(self.tls_cert or self.tls_key),
                "both or neither",
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError(
                setting_of(SecurityConfig, "tls_client_ca").label,
                str(self.tls_client_ca),
                "a server certificate too (METAAS_TLS_CERT / --tls-cert)",
            )
        validate(self)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def authenticates(self) -> bool:
        """Whether callers must prove who they are (token or client cert)."""
        return self.auth_tokens is not None or self.tls_client_ca is not None


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
    max_inflight_requests: int = setting(
        512,
        "--max-inflight-requests",
        "METAAS_MAX_INFLIGHT_REQUESTS",
        "Concurrent RPCs before RESOURCE_EXHAUSTED (with a retry hint).",
        kind=Kind.INTEGER,
        accepts=between(1, 1_000_000, "an integer"),
    )
    # A share of max_inflight_requests, so one tenant cannot lock out the others.
    max_inflight_per_caller: int = setting(
        128,
        "--max-inflight-per-caller",
        "METAAS_MAX_INFLIGHT_PER_CALLER",
        "Concurrent RPCs one caller (token or certificate; without authentication, "
        "anyone) may hold.",
        kind=Kind.INTEGER,
        accepts=at_least(1, "an integer"),
    )
    max_inflight_bytes: int = setting(
        256 * 1024 * 1024,
        "--max-inflight-bytes",
        "METAAS_MAX_INFLIGHT_BYTES",
        "Request bytes held at once over all RPCs; past it, messages are refused before "
        "they are parsed.",
        kind=Kind.INTEGER,
    )
    stream_idle_timeout_s: float = setting(
        30.0,
        "--stream-idle-timeout-s",
        "METAAS_STREAM_IDLE_TIMEOUT_S",
        "A WriteStream with no message for this long is ended (DEADLINE_EXCEEDED).",
        kind=Kind.NUMBER,
        accepts=Accepts("seconds in (0, 86400]", lambda v: 0 < v <= 86_400),
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.max_inflight_bytes < self.max_request_bytes:
            raise ConfigError(
                setting_of(LimitsConfig, "max_inflight_bytes").label,
                self.max_inflight_bytes,
                f"bytes >= the largest request ({self.max_request_bytes})",
            )
