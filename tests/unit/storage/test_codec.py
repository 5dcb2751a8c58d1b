"""The shared item codec (storage/codec.py): a 4-byte header (magic, format
version, codec, flags) and the payload, compressed with zstd or gzip when
header plus payload would exceed the threshold."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaas.server.config import CodecConfig
from metaas.server.sketch import Distribution
from metaas.server.storage import codec
from metaas.server.storage.errors import Corrupt, StorageError

HEADER = 4
MB = 1024 * 1024
compressions = st.sampled_from(["zstd", "gzip"])
EXPECTED = {"zstd": codec.Codec.ZSTD, "gzip": codec.Codec.GZIP}


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """Empty to a few MB, from incompressible noise to long runs, as stored
    items range from random-looking counts to sparse sketches."""
    low, high = draw(st.sampled_from([(0, 64), (64, 64 * 1024), (64 * 1024, MB), (MB, 3 * MB)]))
    size = draw(st.integers(low, high))
    seed = draw(st.integers(0, 2**32 - 1))
    shape = draw(st.sampled_from(["noise", "runs", "text"]))
    rng = random.Random(seed)
    if shape == "noise":
        return rng.randbytes(size)
    if shape == "runs":
        return bytes(np.repeat(np.frombuffer(rng.randbytes(size // 50 + 1), np.uint8), 50)[:size])
    words = [b"dyno", b"web.", b"status", b"2xx", b"router", b'{"', b'":"']
    text = b"".join(rng.choice(words) for _ in range(size // 3 + 1))
    return text[:size]


def codec_in(item: bytes) -> codec.Codec:
    """The codec an item's header names (its third byte)."""
    return codec.Codec(item[2])


def config_for(compression: str, threshold: int) -> CodecConfig:
    return CodecConfig(compression=compression, threshold_bytes=threshold)


@settings(max_examples=60, deadline=None)
@given(
    payload=payloads(),
    compression=compressions,
    threshold_kind=st.sampled_from(["zero", "default", "at the payload", "any"]),
    data=st.data(),
)
def test_round_trip_and_header_for_any_size_codec_and_threshold(
    payload: bytes, compression: str, threshold_kind: str, data: st.DataObject
) -> None:
    threshold = {
        "zero": 0,
        "default": 400 * 1024,
        "at the payload": HEADER + len(payload) + data.draw(st.integers(-1, 1)),
        "any": data.draw(st.integers(0, 4 * MB)),
    }[threshold_kind]
    threshold = max(threshold, 0)
    encoded = codec.encode(payload, config_for(compression, threshold))
    assert codec.decode(encoded.data) == payload
    assert encoded.raw_size == len(payload)
    assert encoded.data[:2] == b"M\x01"  # magic, format version
    assert encoded.data[3] == 0  # flags
    compressed = HEADER + len(payload) > threshold
    assert encoded.codec is (EXPECTED[compression] if compressed else codec.Codec.NONE)
    assert codec_in(encoded.data) is encoded.codec
    if not compressed:
        assert encoded.data[HEADER:] == payload


@settings(max_examples=30, deadline=None)
@given(payload=payloads(), written_with=compressions, configured=compressions)
def test_any_codec_decodes_whatever_is_configured(
    payload: bytes, written_with: str, configured: str
) -> None:
    """Decoding needs no configuration: a reader set to one codec reads items
    written with the other, so switching METAAS_COMPRESSION is safe."""
    item = codec.encode(payload, config_for(written_with, 0)).data
    assert codec_in(item) is EXPECTED[written_with]
    reencoded = codec.encode(codec.decode(item), config_for(configured, 0)).data
    assert codec.decode(reencoded) == payload


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_threshold_is_inclusive_of_the_header(compression: str) -> None:
    threshold = 1000
    at_limit = bytes(threshold - HEADER)
    assert codec.encode(at_limit, config_for(compression, threshold)).codec is codec.Codec.NONE
    over = bytes(threshold - HEADER + 1)
    encoded = codec.encode(over, config_for(compression, threshold))
    assert encoded.codec is EXPECTED[compression]
    assert len(encoded.data) < len(over)


def test_default_threshold_is_the_dynamodb_item_limit() -> None:
    config = CodecConfig()
    assert (config.compression, config.threshold_bytes) == ("zstd", 400 * 1024)
    assert codec.encode(bytes(400 * 1024 - HEADER), config).codec is codec.Codec.NONE
    assert codec.encode(bytes(400 * 1024), config).codec is codec.Codec.ZSTD


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_encoding_is_deterministic(compression: str) -> None:
    """Same payload, same bytes (gzip without a timestamp): rewriting an
    unchanged item stores identical content."""
    payload = random.Random(7).randbytes(100_000) * 3
    config = config_for(compression, 0)
    assert codec.encode(payload, config).data == codec.encode(payload, config).data


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (b"", "shorter than its header"),
        (b"M\x01", "shorter than its header"),
        (b"X\x01\x00\x00payload", "not a metaas item"),
        (b"M\x09\x00\x00payload", "not a metaas item"),
        (b"M\x01\x07\x00payload", "unknown codec"),
    ],
)
def test_foreign_or_damaged_headers_are_refused(item: bytes, message: str) -> None:
    with pytest.raises(Corrupt, match=message) as raised:
        codec.decode(item)
    assert not raised.value.is_retryable


def _plain(payload: bytes) -> bytes:
    return codec.encode(payload, CodecConfig()).data


_STORED = Distribution.from_values(np.array([1.0, 2.5, 400.0])).to_bytes()
DAMAGED = {
    "bad compression": b"M\x01\x01\x00" + b"not zstd at all",
    "bad gzip": b"M\x01\x02\x00" + b"not gzip at all",
    "truncated distribution": _plain(_STORED[:-3]),
    "bad encoding byte": _plain(b"\x63" + _STORED[1:]),
    "trailing bytes": _plain(_STORED + b"\x00"),
    "empty payload": _plain(b""),
}


@pytest.mark.parametrize("damage", sorted(DAMAGED))
async def test_every_decoding_failure_is_the_one_corrupt_error(damage: str) -> None:
    """Whatever is wrong with a stored item, each way of decoding it raises
    Corrupt (a storage error that retrying does not help), never the
    decoder's own error."""
    item = DAMAGED[damage]
    good = codec.encode_distribution(Distribution.from_values(np.array([3.0])), CodecConfig())
    for decode in (
        lambda: codec.decode_distribution(item),
        lambda: codec.decode_many([good.data, item]),
    ):
        with pytest.raises(Corrupt, match="undecodable") as raised:
            decode()
        assert isinstance(raised.value, StorageError)
        assert not raised.value.is_retryable
    with pytest.raises(Corrupt):
        await codec.decode_distributions([item])
    big = [good.data] * 20_000  # decoded on a thread
    with pytest.raises(Corrupt):
        await codec.decode_distributions([*big, item])


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_damaged_compressed_body_is_an_error_not_garbage(compression: str) -> None:
    item = codec.encode(b"x" * 10_000, config_for(compression, 0)).data
    with pytest.raises(Exception):  # noqa: B017, PT011 - zstd and gzip raise their own types
        codec.decode(item[:-5])


async def test_distributions_round_trip_on_and_off_the_event_loop() -> None:
    """Small batches are coded inline, large ones on a thread; both give back
    equal distributions, whichever codec each item used."""
    rng = np.random.default_rng(3)
    small = [Distribution.from_values(rng.lognormal(3, 1, 50)) for _ in range(3)]
    large = [Distribution.from_values(rng.lognormal(3, 4, 20_000)) for _ in range(40)]
    for batch in (small, large):
        zstd = await codec.encode_distributions(batch, config_for("zstd", 0))
        gzip = await codec.encode_distributions(batch, config_for("gzip", 0))
        mixed = [e.data for pair in zip(zstd, gzip, strict=True) for e in pair]
        decoded = await codec.decode_distributions(mixed)
        assert decoded == [d for d in batch for _ in range(2)]
        assert {codec_in(item) for item in mixed} == {codec.Codec.ZSTD, codec.Codec.GZIP}


@pytest.mark.parametrize("encoding", [1, 2])
async def test_the_configured_distribution_encoding_is_written_and_both_are_read(
    encoding: int,
) -> None:
    """``--distribution-encoding 1`` writes what releases before encoding 2
    read, for a rolling upgrade; either is read back the same."""
    rng = np.random.default_rng(4)
    distributions = [Distribution.from_values(rng.lognormal(3.0, 0.8, 60)) for _ in range(20)]
    config = CodecConfig(distribution_encoding=encoding)
    items = [e.data for e in await codec.encode_distributions(distributions, config)]
    assert {item[HEADER] for item in items} == {encoding}
    assert codec.encode_distribution(distributions[0], config).data == items[0]
    decoded = await codec.decode_distributions(items)
    assert [d.to_bytes() for d in decoded] == [d.to_bytes() for d in distributions]


def test_an_unknown_distribution_encoding_is_refused_naming_flag_and_variable() -> None:
    with pytest.raises(ValueError, match="METAAS_DISTRIBUTION_ENCODING / --distribution-encoding"):
        CodecConfig(distribution_encoding=3)
