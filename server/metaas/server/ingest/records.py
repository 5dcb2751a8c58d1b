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

# Record kinds. A write record carries its idempotency key with the key's
# scope and the request's fingerprint; a keys record (the head of every
# segment) carries the live keys the same way.
_WRITE: Final = b"w"
_KEYS: Final = b"k"
# The first format, without scope or fingerprint: still read, so that a log
# left by the previous version is replayed and its keys restored.
_LEGACY_WRITE: Final = b"W"
_LEGACY_KEYS: Final = b"K"
# recorded_ms, accepted, key, scope and fingerprint lengths
_WRITE_HEADER: Final = struct.Struct("<qqHIB")
# accepted, expires_ms, key, scope and fingerprint lengths
_KEY_ENTRY: Final = struct.Struct("<qqHIB")
# recorded_ms, accepted, key length (write); accepted, expires_ms, key length (key)
_LEGACY_HEADER: Final = struct.Struct("<qqH")

# The scope of keys logged in the first format, which had none. No scope of
# the current format is empty.
LEGACY_SCOPE: Final = ""


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
    # Empty without a key, and for records of the first format.
    scope: str
    fingerprint: bytes
    request: bytes


@dataclass(frozen=True, slots=True)
class KeyEntry:
    key: str
    scope: str  # LEGACY_SCOPE for a key of the first format
    fingerprint: bytes  # empty for a key of the first format
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
    scope = record.scope.encode()
    header = _WRITE_HEADER.pack(
        record.recorded_ms, record.accepted, len(key), len(scope), len(record.fingerprint)
    )
    return b"".join((_WRITE, header, key, scope, record.fingerprint, record.request))


def encode_keys(entries: list[KeyEntry]) -> bytes:
    parts = [_KEYS, struct.pack("<I", len(entries))]
    pack = _KEY_ENTRY.pack
    scopes: dict[str, bytes] = {}  # most keys share a few scopes
    for entry in entries:
        key = entry.key.encode()
        scope = scopes.get(entry.scope)
        if scope is None:
            scope = scopes[entry.scope] = entry.scope.encode()
        fingerprint = entry.fingerprint
        header = pack(entry.accepted, entry.expires_ms, len(key), len(scope), len(fingerprint))
        parts += (header, key, scope, fingerprint)
    return b"".join(parts)


def decode(payload: bytes) -> WriteRecord | list[KeyEntry]:
    kind = payload[:1]
    if kind == _WRITE:
        recorded_ms, accepted, key_length, scope_length, fingerprint_length = (
            _WRITE_HEADER.unpack_from(payload, 1)
        )
        key_at = 1 + _WRITE_HEADER.size
        scope_at = key_at + key_length
        fingerprint_at = scope_at + scope_length
        request_at = fingerprint_at + fingerprint_length
        return WriteRecord(
            recorded_ms,
            accepted,
            payload[key_at:scope_at].decode(),
            payload[scope_at:fingerprint_at].decode(),
            payload[fingerprint_at:request_at],
            payload[request_at:],
        )
    if kind == _KEYS:
        return _decode_keys(payload)
    if kind == _LEGACY_WRITE:
        recorded_ms, accepted, key_length = _LEGACY_HEADER.unpack_from(payload, 1)
        key_at = 1 + _LEGACY_HEADER.size
        request_at = key_at + key_length
        return WriteRecord(
            recorded_ms,
            accepted,
            payload[key_at:request_at].decode(),
            LEGACY_SCOPE,
            b"",
            payload[request_at:],
        )
    if kind == _LEGACY_KEYS:
        return _decode_legacy_keys(payload)
    raise ValueError(f"unknown write-ahead log record type {kind!r}")


def _decode_keys(payload: bytes) -> list[KeyEntry]:
    (count,) = struct.unpack_from("<I", payload, 1)
    position = 5
    unpack = _KEY_ENTRY.unpack_from
    header_size = _KEY_ENTRY.size
    scopes: dict[bytes, str] = {}
    entries = []
    for _ in range(count):
        accepted, expires_ms, key_length, scope_length, fingerprint_length = unpack(
            payload, position
        )
        key_at = position + header_size
        scope_at = key_at + key_length
        fingerprint_at = scope_at + scope_length
        position = fingerprint_at + fingerprint_length
        raw_scope = payload[scope_at:fingerprint_at]
        scope = scopes.get(raw_scope)
        if scope is None:
            scope = scopes[raw_scope] = raw_scope.decode()
        entries.append(
            KeyEntry(
                payload[key_at:scope_at].decode(),
                scope,
                payload[fingerprint_at:position],
                accepted,
                expires_ms,
            )
        )
    return entries


def _decode_legacy_keys(payload: bytes) -> list[KeyEntry]:
    (count,) = struct.unpack_from("<I", payload, 1)
    position = 5
    entries = []
    for _ in range(count):
        accepted, expires_ms, key_length = _LEGACY_HEADER.unpack_from(payload, position)
        key_at = position + _LEGACY_HEADER.size
        position = key_at + key_length
        key = payload[key_at:position].decode()
        entries.append(KeyEntry(key, LEGACY_SCOPE, b"", accepted, expires_ms))
    return entries
