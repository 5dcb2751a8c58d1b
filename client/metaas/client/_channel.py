"""Channel options shared by the async and sync clients."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

import grpc

DEFAULT_TARGET: Final = "127.0.0.1:50051"

# Transparent retries of UNAVAILABLE by gRPC itself. Writes are safe to retry
# because every write carries an idempotency key (the client makes one).
SERVICE_CONFIG: Final = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "metaas.v1.MetricsIngest"},
                    {"service": "metaas.v1.MetricsQuery"},
                ],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)

CHANNEL_OPTIONS: Final = (
    ("grpc.enable_retries", 1),
    ("grpc.service_config", SERVICE_CONFIG),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
)


def channel_credentials(
    *,
    tls: bool,
    root_certificates: bytes | None,
    certificate_chain: bytes | None,
    private_key: bytes | None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials when asked for (or implied by any certificate)."""
    if not (tls or root_certificates or certificate_chain or private_key):
        return None
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("a client certificate needs its private key, and the other way round")
    return grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)


def call_metadata(
    token: str | None, metadata: Sequence[tuple[str, str]]
) -> tuple[tuple[str, str], ...]:
    """Metadata sent with every call: the bearer token first, if any."""
    auth = (("authorization", f"Bearer {token}"),) if token else ()
    return (*auth, *metadata)
