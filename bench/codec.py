"""Compress and decompress throughput of a 1 MB stored item, through the
shared item codec (``metaas.server.storage.codec``) with each compression."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from metaas.server.config import CodecConfig
from metaas.server.sketch import from_samples_by_minute
from metaas.server.storage import codec

ITEM_BYTES = 1_000_000


def item_payload(size: int = ITEM_BYTES, seed: int = 3) -> bytes:
    """``size`` bytes of encoded distributions, as a large stored item holds:
    per-minute lognormal latencies, each minute with its own spread."""
    rng = np.random.default_rng(seed)
    parts: list[bytes] = []
    total = 0
    minute = 0
    while total < size:
        values = rng.lognormal(3.0, rng.uniform(0.3, 1.5), 2_000)
        times = np.full(values.size, minute * 60_000, dtype=np.int64)
        for _, distribution in from_samples_by_minute(times, values):
            encoded = distribution.to_bytes()
            parts.append(encoded)
            total += len(encoded)
        minute += 1
    return b"".join(parts)[:size]


def _rate(function: Any, argument: bytes, min_s: float) -> tuple[float, int]:
    """Calls per second of ``function(argument)`` over at least ``min_s``."""
    function(argument)  # warm-up
    calls = 0
    started = time.perf_counter()
    while True:
        function(argument)
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_s:
            return calls / elapsed, calls


def run(min_s: float = 1.0) -> dict[str, Any]:
    payload = item_payload()
    results: dict[str, Any] = {"item_bytes": len(payload)}
    for name in ("zstd", "gzip"):
        # A threshold of 0 compresses every item, as items above 400 KB are.
        config = CodecConfig(compression=name, threshold_bytes=0)
        encoded = codec.encode(payload, config)
        assert encoded.codec is codec.codec_for(config)
        assert codec.decode(encoded.data) == payload
        encodes, _ = _rate(lambda p, c=config: codec.encode(p, c), payload, min_s)
        decodes, _ = _rate(codec.decode, encoded.data, min_s)
        results[name] = {
            "level": config.zstd_level if name == "zstd" else config.gzip_level,
            "compressed_bytes": len(encoded.data),
            "ratio": len(payload) / len(encoded.data),
            "compress_mb_s": encodes * len(payload) / 1e6,
            "decompress_mb_s": decodes * len(payload) / 1e6,
        }
    return results
