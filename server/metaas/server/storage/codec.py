"""The item encoding shared by every backend.

An item is a 4-byte header — magic ``M``, format version, codec, flags — and
the payload. Payloads whose encoding would exceed the threshold (default
400 KB, DynamoDB's item limit) are compressed with zstd (default) or gzip;
any codec decodes whatever the configured one is. Compressing a large item
is CPU work, so the async helpers move it to a thread.

Whatever cannot be decoded — a bad header or compression, a truncated
payload, an unknown encoding byte — raises one error, :class:`Corrupt`, on
every backend.
"""

from __future__ import annotations

import asyncio
import enum
import gzip
import struct
import zlib
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import zstandard

from metaas.server.config import CodecConfig
from metaas.server.sketch import Distribution
from metaas.server.storage.errors import Corrupt

_HEADER: Final = struct.Struct("<cBBB")
_MAGIC: Final = b"M"
_VERSION: Final = 1
# Items at least this large are compressed or decompressed on a worker thread.
_THREAD_ABOVE: Final = 64 * 1024
# What a damaged or foreign item raises while it is decoded: a bad header,
# encoding or varint (ValueError), a cut-short payload (struct.error,
# IndexError), bad gzip (OSError, EOFError, zlib.error) or zstd data.
_UNDECODABLE: Final = (
    ValueError,
    struct.error,
    IndexError,
    OSError,
    EOFError,
    zlib.error,
    zstandard.ZstdError,
)


class Codec(enum.IntEnum):
    NONE = 0
    ZSTD = 1
    GZIP = 2


@dataclass(frozen=True, slots=True)
class Encoded:
    data: bytes
    codec: Codec
    raw_size: int  # payload bytes before compression


def codec_for(config: CodecConfig) -> Codec:
    return Codec.ZSTD if config.compression == "zstd" else Codec.GZIP


def encode(payload: bytes, config: CodecConfig) -> Encoded:
    """Header plus payload, compressed when it would exceed the threshold."""
    if _HEADER.size + len(payload) <= config.threshold_bytes:
        return Encoded(_header(Codec.NONE) + payload, Codec.NONE, len(payload))
    codec = codec_for(config)
    if codec is Codec.ZSTD:
        body = zstandard.ZstdCompressor(level=config.zstd_level).compress(payload)
    else:
        body = gzip.compress(payload, compresslevel=config.gzip_level, mtime=0)
    return Encoded(_header(codec) + body, codec, len(payload))


def decoding(what: str = "stored item") -> _Decoding:
    """``with decoding(what):`` turns what decoding a stored ``what`` raises
    into :class:`Corrupt`."""
    return _Decoding(what)


class _Decoding:
    __slots__ = ("_what",)

    def __init__(self, what: str) -> None:
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(error, _UNDECODABLE):
            raise Corrupt(f"undecodable {self._what}: {error}") from error


def decode(item: bytes) -> bytes:
    """The payload of an item written with any codec; Corrupt when it has none."""
    with decoding():
        return _payload_of(item)


def _payload_of(item: bytes) -> bytes:
    if len(item) < _HEADER.size:
        raise ValueError("item is shorter than its header")
    magic, version, codec, _flags = _HEADER.unpack_from(item, 0)
    if magic != _MAGIC or version != _VERSION:
        raise ValueError(f"not a metaas item (magic {magic!r}, version {version})")
    body = memoryview(item)[_HEADER.size :]
    if codec == Codec.NONE:
        return bytes(body)
    if codec == Codec.ZSTD:
        return zstandard.ZstdDecompressor().decompress(body)
    if codec == Codec.GZIP:
        return gzip.decompress(body)
    raise ValueError(f"unknown codec {codec}")


def distribution_bytes(distribution: Distribution, config: CodecConfig) -> bytes:
    """The distribution in the encoding ``config`` asks for."""
    if config.distribution_encoding == 1:
        return distribution.to_bytes_v1()
    return distribution.to_bytes()


def encode_distribution(distribution: Distribution, config: CodecConfig) -> Encoded:
    return encode(distribution_bytes(distribution, config), config)


def decode_distribution(item: bytes) -> Distribution:
    """The distribution of one item; Corrupt when it holds none."""
    with decoding():
        if len(item) > _HEADER.size and item[:3] == _PLAIN:
            # Uncompressed (the usual case): parse in place, no copy.
            return Distribution.from_bytes(item, _HEADER.size)
        return Distribution.from_bytes(_payload_of(item))


def distribution_of(payload: bytes) -> Distribution:
    """A distribution stored without an item header (inside a DynamoDB
    block); Corrupt when the bytes hold none."""
    with decoding("distribution"):
        return Distribution.from_bytes(payload)


def distributions_of(payloads: list[tuple[bytes, int]]) -> list[Distribution]:
    """``distribution_of`` each ``(payload, offset)``, decoded together
    (``Distribution.many_from_bytes``)."""
    with decoding("distribution"):
        return Distribution.many_from_bytes(payloads)


async def encode_distributions(
    distributions: list[Distribution], config: CodecConfig
) -> list[Encoded]:
    """Encode many; a batch with large payloads is encoded on a thread."""
    payloads = [distribution_bytes(d, config) for d in distributions]
    if sum(len(p) for p in payloads) >= _THREAD_ABOVE:
        return await asyncio.to_thread(lambda: [encode(p, config) for p in payloads])
    return [encode(p, config) for p in payloads]


def decode_many(items: list[bytes]) -> list[Distribution]:
    """``decode_distribution`` of each item, decoded together
    (``Distribution.many_from_bytes``); Corrupt when one holds none."""
    with decoding():
        return Distribution.many_from_bytes(
            [
                (item, _HEADER.size)
                if len(item) > _HEADER.size and item[:3] == _PLAIN
                else (_payload_of(item), 0)
                for item in items
            ]
        )


async def decode_distributions(items: list[bytes]) -> list[Distribution]:
    """Decode many; a batch with large items is decoded on a thread."""
    if sum(len(i) for i in items) >= _THREAD_ABOVE:
        return await asyncio.to_thread(decode_many, items)
    return decode_many(items)


def _header(codec: Codec) -> bytes:
    return _HEADER.pack(_MAGIC, _VERSION, codec, 0)


# The first bytes of an uncompressed item: magic, version, codec.
_PLAIN: Final = _header(Codec.NONE)[:3]
