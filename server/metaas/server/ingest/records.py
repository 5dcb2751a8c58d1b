"""What the write-ahead log holds: ingest's own batches and snapshots of the
idempotency keys, in a versioned byte layout of ingest's own.

Nothing of the public proto is in a record of the current format, so the API
can change without changing the log. Every record starts with its format's
version byte; all integers are little-endian.

Version 2 (this release writes only this)::

    version u8 = 2 | kind u8: b"w" (a write) or b"k" (the keys)

    write:  recorded_ms i64 | samples i64 | series u32 (n)
            | key length u16 | scope length u32 | fingerprint length u8
            | time width u8 (4 or 8) | time base i64 | names length u32
            | key utf-8 | scope utf-8 | fingerprint
            | names: utf-8, NUL between strings: per series its app, its metric,
              then its labels' name and value, sorted by name
            | label counts u32 x n | sample counts u32 x n
            | times: u32 x samples, each an offset from the time base
              (width 4), or i64 x samples (width 8, base 0)
            | values f64 x samples
    keys:   count u32, then per key: accepted i64 | expires_ms i64
            | key length u16 | scope length u32 | fingerprint length u8
            | key utf-8 | scope utf-8 | fingerprint

Samples follow their series' order. Times take width 4 whenever the
batch's times span less than 2**32 ms (49 days), as they do within the
retention. A write without an idempotency key has empty key, scope and
fingerprint.

Earlier formats are still read, so that the log a previous release left is
replayed and its keys restored. They have no version byte; their first
byte is their kind:

- format 1 (releases with scoped keys, through 2026-11): ``w`` then
  recorded_ms i64 | accepted i64 | key u16 | scope u32 | fingerprint u8
  lengths | key | scope | fingerprint | a ``metaas.v1.WriteRequest``'s wire
  bytes; ``k`` then the body of version 2's keys.
- format 0 (the first): ``W`` then recorded_ms i64 | accepted i64 | key
  length u16 | key | WriteRequest bytes; ``K`` then count u32 and per key
  accepted i64 | expires_ms i64 | key length u16 | key. No scope, no
  fingerprint.

The WriteRequest bytes of those formats are read by :mod:`.legacy`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from metaas.server.ingest import legacy
from metaas.server.model import SeriesKey
from metaas.server.sketch.mapping import FloatArray, Int64Array

VERSION: Final = 2
_VERSION_BYTE: Final = bytes((VERSION,))
_WRITE: Final = b"w"
_KEYS: Final = b"k"
_LEGACY_WRITE: Final = b"W"
_LEGACY_KEYS: Final = b"K"
# version, kind, recorded_ms, samples, series, key, scope and fingerprint
# lengths, time width, time base, names length
_WRITE_HEADER: Final = struct.Struct("<Bcqq I HIB BqI")
# accepted, expires_ms, key, scope and fingerprint lengths
_KEY_ENTRY: Final = struct.Struct("<qqHIB")
_COUNT: Final = struct.Struct("<I")
# Format 1's write: recorded_ms, accepted, key, scope and fingerprint lengths.
_V1_WRITE: Final = struct.Struct("<qqHIB")
# Format 0: recorded_ms, accepted, key length (write); accepted, expires_ms,
# key length (key).
_V0_HEADER: Final = struct.Struct("<qqH")
_OFFSETS: Final = np.dtype("<u4")
_TIMES: Final = np.dtype("<i8")
_VALUES: Final = np.dtype("<f8")
_NAMES_SEPARATOR: Final = "\0"

# The scope of keys logged in format 0, which had none. No scope of a later
# format is empty.
LEGACY_SCOPE: Final = ""


@dataclass(frozen=True, slots=True)
class SeriesBatch:
    """Validated samples of one series from one request."""

    series: SeriesKey
    times_ms: Int64Array
    values: FloatArray


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """A validated write as ingest takes it: its series' samples, how many
    there are (the answer), and its idempotency key with the fingerprint of
    the body it came with (both empty without a key)."""

    series: Sequence[SeriesBatch]
    samples: int
    idempotency_key: str = ""
    fingerprint: bytes = b""


@dataclass(frozen=True, slots=True)
class WriteRecord:
    recorded_ms: int
    # The key's scope: empty without a key, and for records of format 0.
    scope: str
    batch: WriteBatch


@dataclass(frozen=True, slots=True)
class KeyEntry:
    key: str
    scope: str  # LEGACY_SCOPE for a key of format 0
    fingerprint: bytes  # empty for a key of format 0
    accepted: int
    expires_ms: int


def encode_write(record: WriteRecord) -> bytes:
    """Raises ValueError, logging nothing, for a name or label holding NUL
    (validation lets none through)."""
    batch = record.batch
    names: list[str] = []
    label_counts = []
    sample_counts = []
    for part in batch.series:
        series = part.series
        names += (series.app, series.metric)
        for label in series.labels:
            names += label
        label_counts.append(len(series.labels))
        size = part.times_ms.size
        if part.values.size != size:
            raise ValueError(f"{series}: {part.values.size} values for {size} times")
        sample_counts.append(size)
    text = _NAMES_SEPARATOR.join(names)
    if text.count(_NAMES_SEPARATOR) != max(len(names) - 1, 0):
        raise ValueError("a name or label holds NUL; the log cannot record it")
    names_bytes = text.encode()
    if batch.series:
        times = np.concatenate([part.times_ms for part in batch.series])
        values = np.concatenate([part.values for part in batch.series])
    else:
        times, values = np.empty(0, np.int64), np.empty(0, np.float64)
    width, base = 8, 0
    if times.size and int(times.max()) - (low := int(times.min())) < 1 << 32:
        width, base = 4, low
    key = batch.idempotency_key.encode()
    scope = record.scope.encode()
    header = _WRITE_HEADER.pack(
        VERSION,
        _WRITE,
        record.recorded_ms,
        batch.samples,
        len(batch.series),
        len(key),
        len(scope),
        len(batch.fingerprint),
        width,
        base,
        len(names_bytes),
    )
    counts = np.array(label_counts + sample_counts, _OFFSETS)
    stamps = (times - base).astype(_OFFSETS) if width == 4 else times.astype(_TIMES, copy=False)
    # The arrays (contiguous) join as buffers, without a copy each.
    return b"".join(
        (
            header,
            key,
            scope,
            batch.fingerprint,
            names_bytes,
            counts.data,
            stamps.data,
            values.astype(_VALUES, copy=False).data,
        )
    )


def encode_keys(entries: list[KeyEntry]) -> bytes:
    parts = [_VERSION_BYTE, _KEYS, _COUNT.pack(len(entries))]
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


def decode(payload: bytes, *, samples: bool = True) -> WriteRecord | list[KeyEntry]:
    """A record of any format this release reads. With ``samples=False`` a
    write's series are left out (empty): restoring keys needs only the rest.
    Raises ValueError for a record of no known format."""
    first = payload[:1]
    if first == _VERSION_BYTE:
        kind = payload[1:2]
        if kind == _WRITE:
            return _decode_write(payload, samples)
        if kind == _KEYS:
            return _decode_keys(payload, 2)
        raise ValueError(f"unknown write-ahead log record kind {kind!r} (format {VERSION})")
    if first == _WRITE:
        return _decode_v1_write(payload, samples)
    if first == _KEYS:
        return _decode_keys(payload, 1)
    if first == _LEGACY_WRITE:
        return _decode_v0_write(payload, samples)
    if first == _LEGACY_KEYS:
        return _decode_v0_keys(payload)
    if first and first[0] < 0x20:
        raise ValueError(
            f"write-ahead log record of format {first[0]}: this release reads formats "
            f"0 to {VERSION} (was the log left by a newer release?)"
        )
    raise ValueError(f"unknown write-ahead log record type {first!r}")


def _decode_write(payload: bytes, samples: bool) -> WriteRecord:
    (
        _,
        _,
        recorded_ms,
        accepted,
        count,
        key_length,
        scope_length,
        fingerprint_length,
        width,
        base,
        names_length,
    ) = _WRITE_HEADER.unpack_from(payload)
    key_at = _WRITE_HEADER.size
    scope_at = key_at + key_length
    fingerprint_at = scope_at + scope_length
    names_at = fingerprint_at + fingerprint_length
    fingerprint = payload[fingerprint_at:names_at]
    key = payload[key_at:scope_at].decode()
    scope = payload[scope_at:fingerprint_at].decode()
    series = _decode_series(payload, names_at, names_length, count, width, base) if samples else ()
    return WriteRecord(recorded_ms, scope, WriteBatch(series, accepted, key, fingerprint))


def _decode_series(
    payload: bytes, names_at: int, names_length: int, count: int, width: int, base: int
) -> list[SeriesBatch]:
    counts_at = names_at + names_length
    times_at = counts_at + 8 * count
    text = payload[names_at:counts_at].decode()
    names = text.split(_NAMES_SEPARATOR) if count else []
    counts = np.frombuffer(payload, _OFFSETS, 2 * count, counts_at)
    label_counts = counts[:count].tolist()
    sample_counts = counts[count:].tolist()
    total = sum(sample_counts)
    values_at = times_at + width * total
    if width == 4:
        times = np.frombuffer(payload, _OFFSETS, total, times_at).astype(np.int64) + base
    elif width == 8:
        times = np.frombuffer(payload, _TIMES, total, times_at).astype(np.int64)
    else:
        raise ValueError(f"write-ahead log record with time width {width}")
    if values_at + 8 * total != len(payload):
        raise ValueError("write-ahead log record's length does not match its counts")
    if len(names) != 2 * count + 2 * sum(label_counts):
        raise ValueError("write-ahead log record's names do not match its label counts")
    values = np.frombuffer(payload, _VALUES, total, values_at).astype(np.float64)
    batches = []
    at = start = 0
    for labels, size in zip(label_counts, sample_counts, strict=True):
        pairs = names[at + 2 : at + 2 + 2 * labels]
        labelled = tuple(zip(pairs[::2], pairs[1::2], strict=True))
        end = start + size
        batches.append(
            SeriesBatch(
                SeriesKey(names[at], names[at + 1], labelled), times[start:end], values[start:end]
            )
        )
        at += 2 + 2 * labels
        start = end
    return batches


def _decode_keys(payload: bytes, position: int) -> list[KeyEntry]:
    """A keys record's entries, from ``position`` (after its kind)."""
    (count,) = _COUNT.unpack_from(payload, position)
    position += _COUNT.size
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


def _decode_v1_write(payload: bytes, samples: bool) -> WriteRecord:
    recorded_ms, accepted, key_length, scope_length, fingerprint_length = _V1_WRITE.unpack_from(
        payload, 1
    )
    key_at = 1 + _V1_WRITE.size
    scope_at = key_at + key_length
    fingerprint_at = scope_at + scope_length
    request_at = fingerprint_at + fingerprint_length
    batch = WriteBatch(
        _request_series(payload, request_at) if samples else (),
        accepted,
        payload[key_at:scope_at].decode(),
        payload[fingerprint_at:request_at],
    )
    return WriteRecord(recorded_ms, payload[scope_at:fingerprint_at].decode(), batch)


def _decode_v0_write(payload: bytes, samples: bool) -> WriteRecord:
    recorded_ms, accepted, key_length = _V0_HEADER.unpack_from(payload, 1)
    key_at = 1 + _V0_HEADER.size
    request_at = key_at + key_length
    series = _request_series(payload, request_at) if samples else ()
    key = payload[key_at:request_at].decode()
    return WriteRecord(recorded_ms, LEGACY_SCOPE, WriteBatch(series, accepted, key))


def _request_series(payload: bytes, request_at: int) -> list[SeriesBatch]:
    return [SeriesBatch(*part) for part in legacy.request_series(payload[request_at:])]


def _decode_v0_keys(payload: bytes) -> list[KeyEntry]:
    (count,) = _COUNT.unpack_from(payload, 1)
    position = 1 + _COUNT.size
    entries = []
    for _ in range(count):
        accepted, expires_ms, key_length = _V0_HEADER.unpack_from(payload, position)
        key_at = position + _V0_HEADER.size
        position = key_at + key_length
        key = payload[key_at:position].decode()
        entries.append(KeyEntry(key, LEGACY_SCOPE, b"", accepted, expires_ms))
    return entries
