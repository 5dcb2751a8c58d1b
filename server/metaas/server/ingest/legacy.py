"""The samples of log records of formats 0 and 1, which hold the wire bytes of
a ``metaas.v1.WriteRequest`` (see :mod:`.records`).

They are read here with a decoder of that message as release 2026-11 wrote
it, not with the generated code, so that the public proto can change without
leaving such a log unreadable. Only what those releases wrote is read::

    WriteRequest:  1 series (SeriesSamples, repeated), 2 idempotency_key
    SeriesSamples: 1 app, 2 metric, 3 labels (entries: 1 name, 2 value),
                   4 times_ms (int64, packed or not), 5 values (double, packed or not)

Other fields are skipped. Drop this module once no log of those releases can
be left (it is replayed and deleted at the first start after the upgrade).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import numpy as np

from metaas.server.model import SeriesKey
from metaas.server.sketch.mapping import FloatArray, Int64Array

_VARINT: Final = 0
_FIXED64: Final = 1
_LENGTH_DELIMITED: Final = 2
_FIXED32: Final = 5
_DOUBLES: Final = np.dtype("<f8")

Field = tuple[int, int, int | bytes]  # number, wire type, value


def request_series(body: bytes) -> list[tuple[SeriesKey, Int64Array, FloatArray]]:
    """Each series of the request, as its key, times and values. Raises
    ValueError for bytes that are not such a message."""
    return [_series(_bytes(value)) for number, _, value in _fields(body) if number == 1]


def _series(body: bytes) -> tuple[SeriesKey, Int64Array, FloatArray]:
    app = metric = ""
    labels: dict[str, str] = {}
    times: list[Int64Array] = []
    values: list[FloatArray] = []
    for number, wire, value in _fields(body):
        if number == 1:
            app = _bytes(value).decode()
        elif number == 2:
            metric = _bytes(value).decode()
        elif number == 3:
            entry = {n: _bytes(v).decode() for n, _, v in _fields(_bytes(value)) if n in (1, 2)}
            labels[entry.get(1, "")] = entry.get(2, "")
        elif number == 4:
            if isinstance(value, int):
                times.append(np.array([value - (1 << 64) if value >= 1 << 63 else value]))
            else:
                times.append(_varints(value))
        elif number == 5:
            if wire not in (_FIXED64, _LENGTH_DELIMITED):
                raise ValueError(f"values with wire type {wire}")
            values.append(np.frombuffer(_bytes(value), _DOUBLES))
    return (
        SeriesKey.of(app, metric, labels),
        np.concatenate(times).astype(np.int64) if times else np.empty(0, np.int64),
        np.concatenate(values).astype(np.float64) if values else np.empty(0, np.float64),
    )


def _bytes(value: int | bytes) -> bytes:
    if isinstance(value, int):
        raise ValueError("a varint where bytes were expected")
    return value


def _fields(data: bytes) -> Iterator[Field]:
    position = 0
    end = len(data)
    while position < end:
        tag, position = _varint(data, position)
        number, wire = tag >> 3, tag & 7
        value: int | bytes
        if wire == _VARINT:
            value, position = _varint(data, position)
        elif wire == _LENGTH_DELIMITED:
            length, position = _varint(data, position)
            value = data[position : position + length]
            position += length
        elif wire == _FIXED64:
            value = data[position : position + 8]
            position += 8
        elif wire == _FIXED32:
            value = data[position : position + 4]
            position += 4
        else:
            raise ValueError(f"field {number} has wire type {wire}")
        if position > end:
            raise ValueError(f"field {number} is cut short")
        yield number, wire, value


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while shift < 70:
        if position >= len(data):
            raise ValueError("a varint is cut short")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7
    raise ValueError("a varint is longer than 10 bytes")


def _varints(data: bytes) -> Int64Array:
    """Packed int64 varints, decoded in one numpy pass: each byte's 7 bits
    shifted by its place in its varint, summed per varint. A negative int64
    takes 10 bytes; its bits beyond 64 fall off the uint64 shift."""
    raw = np.frombuffer(data, np.uint8)
    if raw.size == 0:
        return np.empty(0, np.int64)
    ends = np.flatnonzero(raw < 0x80)
    if ends.size == 0 or ends[-1] != raw.size - 1:
        raise ValueError("a packed varint is cut short")
    starts = np.concatenate(([0], ends[:-1] + 1))
    place = np.arange(raw.size) - np.repeat(starts, ends - starts + 1)
    if int(place.max()) > 9:
        raise ValueError("a varint is longer than 10 bytes")
    bits = (raw & 0x7F).astype(np.uint64) << (7 * place).astype(np.uint64)
    return np.add.reduceat(bits, starts).view(np.int64)
