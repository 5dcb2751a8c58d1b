"""Payloads of block and catalog items, and their layout as DynamoDB items:
inline when the encoded payload fits one item, else chunks plus a head.

Every payload goes through the shared item codec (storage/codec.py): it is
compressed when it would not fit an item (or exceeds the configured
threshold, whichever is smaller), and an encoding still too large is split
into chunks written before the head that names them, so a reader following
a head always finds complete chunks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from metaas.server.config import CodecConfig
from metaas.server.storage import codec
from metaas.server.storage.dynamodb import schema

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb.type_defs import AttributeValueTypeDef

    Item = dict[str, AttributeValueTypeDef]

_PAYLOAD: Final = struct.Struct("<BBI")  # version, kind, entry count
_VERSION: Final = 1
_BLOCK: Final = 1
_CATALOG: Final = 2
_BLOCK_ENTRY: Final = struct.Struct("<IqI")  # labels length, epoch, distribution length
_CATALOG_ENTRY: Final = struct.Struct("<IQ")  # labels length, minute bit mask
_HASH_BYTES: Final = 16
# Bytes the codec puts before a payload (an empty payload is never compressed).
_CODEC_HEADER: Final = len(codec.encode(b"", CodecConfig()).data)

# labels_key -> (epoch, distribution bytes)
BlockEntries = dict[str, tuple[int, bytes]]
# labels_key -> bit i set when the series has data in minute i of the hour
CatalogEntries = dict[str, int]


def encode_block(entries: Mapping[str, tuple[int, bytes]]) -> bytes:
    parts = [_PAYLOAD.pack(_VERSION, _BLOCK, len(entries))]
    for labels in sorted(entries):
        epoch, distribution = entries[labels]
        encoded = labels.encode()
        parts += (_BLOCK_ENTRY.pack(len(encoded), epoch, len(distribution)), encoded, distribution)
    return b"".join(parts)


def decode_block(payload: bytes) -> BlockEntries:
    count, position = _open(payload, _BLOCK)
    entries: BlockEntries = {}
    view = memoryview(payload)
    for _ in range(count):
        labels_length, epoch, length = _BLOCK_ENTRY.unpack_from(payload, position)
        position += _BLOCK_ENTRY.size
        labels = str(view[position : position + labels_length], "utf-8")
        position += labels_length
        entries[labels] = (epoch, bytes(view[position : position + length]))
        position += length
    _close(payload, position)
    return entries


def encode_catalog(entries: Mapping[str, int]) -> bytes:
    parts = [_PAYLOAD.pack(_VERSION, _CATALOG, len(entries))]
    for labels in sorted(entries):
        encoded = labels.encode()
        parts += (_CATALOG_ENTRY.pack(len(encoded), entries[labels]), encoded)
    return b"".join(parts)


def decode_catalog(payload: bytes) -> CatalogEntries:
    count, position = _open(payload, _CATALOG)
    entries: CatalogEntries = {}
    view = memoryview(payload)
    for _ in range(count):
        labels_length, mask = _CATALOG_ENTRY.unpack_from(payload, position)
        position += _CATALOG_ENTRY.size
        entries[str(view[position : position + labels_length], "utf-8")] = mask
        position += labels_length
    _close(payload, position)
    return entries


def _open(payload: bytes, kind: int) -> tuple[int, int]:
    version, found, count = _PAYLOAD.unpack_from(payload, 0)
    if version != _VERSION or found != kind:
        raise ValueError(f"unexpected payload version {version} kind {found} (wanted {kind})")
    return count, _PAYLOAD.size


def _close(payload: bytes, position: int) -> None:
    if position != len(payload):
        raise ValueError(f"payload has {len(payload) - position} trailing bytes")


@dataclass(frozen=True, slots=True)
class Layout:
    """The items that store one encoded payload: ``chunks`` (possibly none)
    must be written before ``head``."""

    head: Item
    chunks: list[Item]
    encoded: codec.Encoded

    @property
    def write_units(self) -> int:
        return schema.capacity_units(schema.item_size(self.head)) + sum(
            schema.capacity_units(schema.item_size(c)) for c in self.chunks
        )

    @property
    def saved_bytes(self) -> int:
        """Payload bytes compression kept out of the table."""
        return _CODEC_HEADER + self.encoded.raw_size - len(self.encoded.data)

    @property
    def uncompressed_write_units(self) -> int:
        """Write units of the same payload stored uncompressed in one item
        (hypothetical when that exceeds the item limit)."""
        raw_item = (
            _head_overhead(self.head) + len(schema.DATA) + _CODEC_HEADER + self.encoded.raw_size
        )
        return schema.capacity_units(raw_item)


def head_key(pk: str, sk: str) -> Item:
    return {schema.PK: {"S": pk}, schema.SK: {"S": sk}}


def codec_config_for(pk: str, sk: str, config: CodecConfig) -> CodecConfig:
    """``config`` with a threshold low enough that an uncompressed encoding
    always fits in one item with this key."""
    room = schema.MAX_ITEM_BYTES - _head_overhead(_bare_head(pk, sk, 0)) - len(schema.DATA)
    if config.threshold_bytes <= room:
        return config
    return dataclasses.replace(config, threshold_bytes=max(room, 0))


def layout(pk: str, sk: str, expires_s: int, encoded: codec.Encoded) -> Layout:
    head = _bare_head(pk, sk, expires_s)
    inline: Item = {**head, schema.DATA: {"B": encoded.data}}
    if schema.item_size(inline) <= schema.MAX_ITEM_BYTES:
        return Layout(inline, [], encoded)
    content_hash = hashlib.blake2b(encoded.data, digest_size=_HASH_BYTES).hexdigest()
    owner = schema.chunk_pk(pk, sk, content_hash)
    room = schema.MAX_ITEM_BYTES - _head_overhead(_bare_chunk(owner, 0, expires_s))
    room -= len(schema.DATA)
    pieces = [encoded.data[i : i + room] for i in range(0, len(encoded.data), room)]
    chunks: list[Item] = [
        {**_bare_chunk(owner, index, expires_s), schema.DATA: {"B": piece}}
        for index, piece in enumerate(pieces)
    ]
    head = {
        **head,
        schema.CHUNKS: {"N": str(len(chunks))},
        schema.HASH: {"S": content_hash},
        schema.SIZE: {"N": str(len(encoded.data))},
    }
    return Layout(head, chunks, encoded)


def chunk_keys(head: Item) -> list[Item]:
    """Keys of the chunks a head points at (none for an inline head)."""
    if schema.CHUNKS not in head:
        return []
    owner = schema.chunk_pk(head[schema.PK]["S"], head[schema.SK]["S"], head[schema.HASH]["S"])
    return [
        {schema.PK: {"S": owner}, schema.SK: {"S": schema.chunk_sk(i)}}
        for i in range(int(head[schema.CHUNKS]["N"]))
    ]


def assemble(head: Item, chunks: Mapping[tuple[str, str], Item]) -> bytes | None:
    """The encoded payload of a head, or None when a chunk is missing (the
    head was replaced and its chunks removed since it was read)."""
    if schema.DATA in head:
        return head[schema.DATA]["B"]
    pieces = []
    for key in chunk_keys(head):
        chunk = chunks.get((key[schema.PK]["S"], key[schema.SK]["S"]))
        if chunk is None:
            return None
        pieces.append(chunk[schema.DATA]["B"])
    data = b"".join(pieces)
    if len(data) != int(head[schema.SIZE]["N"]):
        return None
    return data


def _bare_head(pk: str, sk: str, expires_s: int) -> Item:
    return {schema.PK: {"S": pk}, schema.SK: {"S": sk}, schema.TTL: {"N": str(expires_s)}}


def _bare_chunk(owner: str, index: int, expires_s: int) -> Item:
    return _bare_head(owner, schema.chunk_sk(index), expires_s)


def _head_overhead(head: Item) -> int:
    """Size of the head's keys and TTL (everything but the payload)."""
    return schema.item_size({name: value for name, value in head.items() if name in _KEYS})


_KEYS: Final = frozenset((schema.PK, schema.SK, schema.TTL))
