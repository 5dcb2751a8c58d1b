"""How the DynamoDB backend lays payloads out in items (no emulator needed):
block and catalog payloads round-trip, every item stays within 400 KB, and an
encoding too large for one item is split into chunks that reassemble."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from metaas.server.config import CodecConfig
from metaas.server.storage import codec
from metaas.server.storage.dynamodb import items, schema

labels = st.text(max_size=40)
PK = schema.block_pk("shop", "router.latency_ms", 1_799_971_200_000)
SK = schema.block_sk(1_800_000_000_000, "0123456789abcdef")


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(labels, st.tuples(st.integers(0, 2**62), st.binary(max_size=300))))
def test_block_payload_round_trips(entries: dict[str, tuple[int, bytes]]) -> None:
    assert items.decode_block(items.encode_block(entries)) == entries


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(labels, st.integers(0, 2**60 - 1)))
def test_catalog_payload_round_trips(entries: dict[str, int]) -> None:
    assert items.decode_catalog(items.encode_catalog(entries)) == entries


@settings(max_examples=25, deadline=None)
@given(
    size=st.one_of(st.integers(0, 1000), st.integers(390_000, 410_000), st.integers(1, 2_500_000)),
    compressible=st.booleans(),
    compression=st.sampled_from(["zstd", "gzip"]),
)
def test_every_item_fits_and_chunks_reassemble(
    size: int, compressible: bool, compression: str
) -> None:
    rng = random.Random(size)
    payload = bytes(size) if compressible else rng.randbytes(size)
    config = items.codec_config_for(PK, SK, CodecConfig(compression))
    layout = items.layout(PK, SK, 1_900_000_000, codec.encode(payload, config))
    every = [layout.head, *layout.chunks]
    assert all(schema.item_size(item) <= schema.MAX_ITEM_BYTES for item in every)
    stored = {(c[schema.PK]["S"], c[schema.SK]["S"]): c for c in layout.chunks}
    data = items.assemble(layout.head, stored)
    assert data is not None
    assert codec.decode(data) == payload
    if layout.chunks:
        # The item header names the codec: chunking comes after compression.
        assert codec.Codec(data[2]) is not codec.Codec.NONE
        assert items.assemble(layout.head, dict(list(stored.items())[1:])) is None


def test_payload_under_the_threshold_but_over_an_item_is_compressed() -> None:
    """The configured threshold (400 KiB) leaves no room for the keys: the
    backend lowers it per item so an uncompressed encoding always fits."""
    payload = bytes(405_000)
    assert codec.encode(payload, CodecConfig()).codec is codec.Codec.NONE
    config = items.codec_config_for(PK, SK, CodecConfig())
    layout = items.layout(PK, SK, 1, codec.encode(payload, config))
    assert layout.encoded.codec is codec.Codec.ZSTD
    assert not layout.chunks


def test_write_units_saved_are_measured_on_the_whole_item() -> None:
    payload = bytes(1_000_000)
    layout = items.layout(PK, SK, 1, codec.encode(payload, CodecConfig(threshold_bytes=0)))
    keys = schema.item_size({k: v for k, v in layout.head.items() if k != schema.DATA})
    raw_item = keys + len(schema.DATA) + 4 + len(payload)
    assert layout.uncompressed_write_units == math.ceil(raw_item / 1024)
    assert layout.write_units == 1
    assert layout.saved_bytes == 1_000_004 - len(layout.encoded.data)
