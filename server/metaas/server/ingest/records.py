"""What the write-ahead log holds: accepted write requests and snapshots of
the idempotency keys, and how requests become per-series arrays."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

import numpy as np

from metaas.server.model import SeriesKey
from metaas.server.sketch.histogram import FloatArray, Int64Array
from metaas.v1 import ingest_pb2

_WRITE: Final = b"W"
_KEYS: Final = b"K"
_WRITE_HEADER: Final = struct.Struct("<qqH")  # recorded_ms, accepted, key length
_KEY_ENTRY: Final = struct.Struct("<qqH")  # accepted, expires_ms, key length


@dataclass(frozen=True, slots=True)
class SeriesBatch:
    """Validated samples of one series from one request."""

    series: SeriesKey
    times_ms: Int64Array
    values: FloatArray


@dataclass(frozen=True, slots=True)
class WriteRecord:
    recorded_ms: int
    accepted: int
    idempotency_key: str
    request: bytes


@dataclass(frozen=True, slots=True)
class KeyEntry:
    key: str
    accepted: int
    expires_ms: int


def batches_from_request(request: ingest_pb2.WriteRequest) -> list[SeriesBatch]:
    return [
        SeriesBatch(
            SeriesKey.of(s.app, s.metric, dict(s.labels)),
            np.asarray(s.times_ms, dtype=np.int64),
            np.asarray(s.values, dtype=np.float64),
        )
        for s in request.series
    ]


def encode_write(record: WriteRecord) -> bytes:
    key = record.idempotency_key.encode()
    header = _WRITE_HEADER.pack(record.recorded_ms, record.accepted, len(key))
    return b"".join((_WRITE, header, key, record.request))


def encode_keys(entries: list[KeyEntry]) -> bytes:
    parts = [_KEYS, struct.pack("<I", len(entries))]
    for entry in entries:
        key = entry.key.encode()
        parts.append(_KEY_ENTRY.pack(entry.accepted, entry.expires_ms, len(key)))
        parts.append(key)
    return b"".join(parts)


def decode(payload: bytes) -> WriteRecord | list[KeyEntry]:
    kind, body = payload[:1], memoryview(payload)[1:]
    if kind == _WRITE:
        recorded_ms, accepted, key_length = _WRITE_HEADER.unpack_from(body, 0)
        start = _WRITE_HEADER.size
        key = bytes(body[start : start + key_length]).decode()
        return WriteRecord(recorded_ms, accepted, key, bytes(body[start + key_length :]))
    if kind == _KEYS:
        (count,) = struct.unpack_from("<I", body, 0)
        position = 4
        entries = []
        for _ in range(count):
            accepted, expires_ms, key_length = _KEY_ENTRY.unpack_from(body, position)
            position += _KEY_ENTRY.size
            key = bytes(body[position : position + key_length]).decode()
            position += key_length
            entries.append(KeyEntry(key, accepted, expires_ms))
        return entries
    raise ValueError(f"unknown write-ahead log record type {kind!r}")
