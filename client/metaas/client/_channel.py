"""Channel options shared by the async and sync clients."""

from __future__ import annotations

import json
from typing import Final

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
