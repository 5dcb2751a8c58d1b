"""Idempotency keys: scoped to the caller and apps, checked against the body,
bounded in bytes without forgetting a key before its window ends."""

from __future__ import annotations

import asyncio
import gc
import logging
import struct
import tracemalloc
from pathlib import Path

import pytest

from metaas.server.api.intake import write_batch
from metaas.server.api.validation import validate_write
from metaas.server.config import IngestConfig, LimitsConfig
from metaas.server.ingest.idempotency import (
    IdempotencyKeys,
    KeyReused,
    KeysFull,
    ScopedKey,
    entry_size,
    fingerprint,
    scope_of,
)
from metaas.server.ingest.pipeline import IngestPipeline
from metaas.server.ingest.wal import WriteAheadLog
from metaas.server.storage import Storage
from metaas.server.telemetry import noop
from metaas.v1 import ingest_pb2
from tests.conformance.conftest import RETENTION_MS, FixedClock
from tests.unit.conftest import START
from tests.unit.ingest.test_pipeline import crash

MINUTE = 60_000
WINDOW_S = 600.0


def pipeline(
    wal: Path, storage: Storage, clock: FixedClock, max_bytes: int = 64 * 1024 * 1024
) -> IngestPipeline:
    config = IngestConfig(
        wal_dir=wal,
        flush_interval_s=3600,
        hot_minutes=1,
        idempotency_window_s=WINDOW_S,
        idempotency_max_bytes=max_bytes,
    )
    return IngestPipeline(
        config, retention_ms=RETENTION_MS, storage=storage, clock=clock, telemetry=noop()
    )


def request(
    key: str, samples: int, *, app: str = "a", reverse_labels: bool = False
) -> ingest_pb2.WriteRequest:
    series = ingest_pb2.SeriesSamples(
        app=app, metric="m", times_ms=[START - MINUTE] * samples, values=[1.0] * samples
    )
    labels = [("dyno", "web.1"), ("region", "eu"), ("status", "2xx")]
    for name, value in reversed(labels) if reverse_labels else labels:
        series.labels[name] = value
    return ingest_pb2.WriteRequest(idempotency_key=key, series=[series])


async def send(
    p: IngestPipeline, clock: FixedClock, message: ingest_pb2.WriteRequest, caller: str
) -> int:
    batches, accepted = validate_write(
        message, now_ms=clock.now_ms(), retention_ms=RETENTION_MS, limits=LimitsConfig()
    )
    return await p.write(write_batch(message, batches, accepted), caller=caller)


async def write(
    p: IngestPipeline,
    clock: FixedClock,
    key: str,
    samples: int,
    *,
    caller: str = "router-7",
    app: str = "a",
) -> int:
    return await send(p, clock, request(key, samples, app=app), caller)


async def stored(storage: Storage, app: str = "a") -> int:
    partials = await storage.read_partials(app, "m", 0, START + MINUTE)
    return sum(p.distribution.count for p in partials)


def room_for(entries: int, key: str = "k0", caller: str = "router-7") -> int:
    """A byte bound that holds ``entries`` keys like ``key`` and no more."""
    return max(1024, entries * entry_size(key, scope_of(caller, ["a"])) + 1)


async def test_callers_with_the_same_key_are_each_applied_and_answered(
    tmp_path: Path, storage: Storage, clock: FixedClock
) -> None:
    p = pipeline(tmp_path / "wal", storage, clock)
    await p.start()
    assert await write(p, clock, "k", 5, caller="tenant-a") == 5
    assert await write(p, clock, "k", 3, caller="tenant-b") == 3
    # Each caller's retry gets its own answer.
    assert await write(p, clock, "k", 5, caller="tenant-a") == 5
    assert await write(p, clock, "k", 3, caller="tenant-b") == 3
    await p.stop()
    assert await stored(storage) == 8


async def test_the_same_key_for_other_apps_is_another_key(
    tmp_path: Path, storage: Storage, clock: FixedClock
) -> None:
    p = pipeline(tmp_path / "wal", storage, clock)
    await p.start()
    assert await write(p, clock, "k", 2, app="a") == 2
    assert await write(p, clock, "k", 4, app="b") == 4
    await p.stop()
    assert (await stored(storage, "a"), await stored(storage, "b")) == (2, 4)


async def test_the_same_key_with_another_body_is_refused(
    tmp_path: Path, storage: Storage, clock: FixedClock
) -> None:
    p = pipeline(tmp_path / "wal", storage, clock)
    await p.start()
    assert await write(p, clock, "k", 5) == 5
    with pytest.raises(KeyReused) as refused:
        await write(p, clock, "k", 6)
    assert refused.value.key == "k"
    assert "idempotency_key 'k'" in str(refused.value)
    await p.stop()
    assert await stored(storage) == 5


async def test_a_retry_with_another_body_while_the_first_is_in_flight_is_refused(
    tmp_path: Path, storage: Storage, clock: FixedClock
) -> None:
    p = pipeline(tmp_path / "wal", storage, clock)
    await p.start()
    first = asyncio.create_task(write(p, clock, "k", 5))
    await asyncio.sleep(0)  # appended, waiting for the disk
    with pytest.raises(KeyReused):
        await write(p, clock, "k", 6)
    assert await write(p, clock, "k", 5) == 5  # the same body waits for the first answer
    assert await first == 5
    await p.stop()
    assert await stored(storage) == 5


async def test_a_retry_is_answered_once_across_a_restart(
    tmp_path: Path, storage: Storage, clock: FixedClock
) -> None:
    wal = tmp_path / "wal"
    first = pipeline(wal, storage, clock)
    await first.start()
    assert await send(first, clock, request("k", 5), "router-7") == 5
    assert await send(first, clock, request("k", 5), "router-7") == 5
    await crash(first)

    second = pipeline(wal, storage, clock)
    await second.start()
    # Labels in another order are the same body: the fingerprint does not
    # depend on the order a client filled the map in.
    assert await send(second, clock, request("k", 5, reverse_labels=True), "router-7") == 5
    # Scope and fingerprint survived the restart too.
    with pytest.raises(KeyReused):
        await send(second, clock, request("k", 7), "router-7")
    assert await send(second, clock, request("k", 2), "tenant-b") == 2
    await second.stop()
    assert await stored(storage) == 7


async def test_a_flood_of_keys_is_refused_and_earlier_keys_are_still_remembered(
    tmp_path: Path, storage: Storage, clock: FixedClock
) -> None:
    p = pipeline(tmp_path / "wal", storage, clock, max_bytes=room_for(3))
    await p.start()
    for i in range(3):
        assert await write(p, clock, f"k{i}", 1) == 1
    clock.now += 100_000
    with pytest.raises(KeysFull) as refused:
        await write(p, clock, "k3", 1)
    assert refused.value.limit_bytes == room_for(3)
    assert refused.value.used_bytes == 3 * entry_size("k0", scope_of("router-7", ["a"]))
    assert refused.value.retry_after_s == WINDOW_S - 100  # until k0 expires
    for i in range(3):  # retries inside the window: answered, not applied again
        assert await write(p, clock, f"k{i}", 1) == 1
    assert await write(p, clock, "", 10) == 10  # writes without a key are not held back
    await p.stop()
    assert await stored(storage) == 3 + 10  # nothing of the refused write was applied


async def test_expired_keys_free_their_bytes(
    tmp_path: Path, storage: Storage, clock: FixedClock
) -> None:
    p = pipeline(tmp_path / "wal", storage, clock, max_bytes=room_for(2))
    await p.start()
    await write(p, clock, "k0", 1)
    clock.now += 1_000
    await write(p, clock, "k1", 1)
    with pytest.raises(KeysFull):
        await write(p, clock, "k2", 1)
    clock.now = START + int(WINDOW_S * 1000)  # k0 expires, k1 does not
    assert await write(p, clock, "k2", 1) == 1
    assert p._keys.used_bytes == 2 * entry_size("k0", scope_of("router-7", ["a"]))
    with pytest.raises(KeysFull):
        await write(p, clock, "k3", 1)
    assert await write(p, clock, "k1", 1) == 1  # still remembered
    await p.stop()
    assert await stored(storage) == 3


async def test_keys_in_flight_hold_their_room(
    tmp_path: Path, storage: Storage, clock: FixedClock
) -> None:
    key = "x" * 60
    assert 2 * entry_size(key, scope_of("router-7", ["a"])) > 1024
    p = pipeline(tmp_path / "wal", storage, clock, max_bytes=1024)
    await p.start()
    first = asyncio.create_task(write(p, clock, key, 5))
    await asyncio.sleep(0)  # in flight, not answered yet
    with pytest.raises(KeysFull):
        await write(p, clock, "y" * 60, 5)
    assert await first == 5
    await asyncio.sleep(0)
    # Answered: its room moved from the reservation to the entry, counted once.
    assert p._keys.used_bytes == entry_size(key, scope_of("router-7", ["a"]))
    await p.stop()
    assert await stored(storage) == 5


async def test_restored_keys_past_the_bound_are_all_kept(
    tmp_path: Path, storage: Storage, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    wal = tmp_path / "wal"
    first = pipeline(wal, storage, clock)
    await first.start()
    for i in range(4):
        await write(first, clock, f"k{i}", 1)
    await crash(first)

    second = pipeline(wal, storage, clock, max_bytes=room_for(2))
    with caplog.at_level(logging.WARNING, logger="metaas.server.ingest.pipeline"):
        await second.start()
    assert "over the limit" in caplog.text
    for i in range(4):
        assert await write(second, clock, f"k{i}", 1) == 1
    with pytest.raises(KeysFull):
        await write(second, clock, "new", 1)
    clock.now += int(WINDOW_S * 1000)
    assert await write(second, clock, "new", 1) == 1
    await second.stop()
    assert await stored(storage) == 5


def _legacy_write(recorded_ms: int, accepted: int, message: ingest_pb2.WriteRequest) -> bytes:
    key = message.idempotency_key.encode()
    return (
        b"W" + struct.pack("<qqH", recorded_ms, accepted, len(key)) + key
    ) + message.SerializeToString()


def _legacy_keys(entries: list[tuple[str, int, int]]) -> bytes:
    parts = [b"K", struct.pack("<I", len(entries))]
    for key, accepted, expires_ms in entries:
        parts += (struct.pack("<qqH", accepted, expires_ms, len(key.encode())), key.encode())
    return b"".join(parts)


async def test_a_log_of_the_first_format_is_replayed_with_its_keys(
    tmp_path: Path, storage: Storage, clock: FixedClock
) -> None:
    wal = tmp_path / "wal"
    old = WriteAheadLog(wal, "00112233445566ff")
    await old.open(_legacy_keys([("before", 4, START + 60_000)]))
    for message in (request("k", 5), request("", 2)):
        await old.append(_legacy_write(START, 5 if message.idempotency_key else 2, message), int)
    await old.close()

    first = pipeline(wal, storage, clock)
    await first.start()
    # Without a caller or body on record, a key of the first format
    # matches the key alone, as it did then: a retry is never applied twice.
    assert await write(first, clock, "k", 5, caller="anyone") == 5
    assert await write(first, clock, "before", 1) == 4
    await crash(first)  # its segment now carries those keys in the new format

    second = pipeline(wal, storage, clock)
    await second.start()
    assert await write(second, clock, "k", 9, caller="someone-else") == 5
    clock.now += 60_000  # "before" expires
    assert await write(second, clock, "before", 1) == 1
    await second.stop()
    assert await stored(storage) == 5 + 2 + 1


def test_scopes_name_the_caller_and_the_distinct_apps_and_never_collide() -> None:
    assert scope_of("router-7", ["b", "a", "b"]) == '["router-7","a","b"]'
    assert scope_of("a", ["b"]) != scope_of("a,b", [])  # no two scopes collide


def test_the_accounted_bytes_cover_the_memory_of_a_key() -> None:
    keys = IdempotencyKeys(int(WINDOW_S * 1000), 1 << 40, FixedClock(START))
    count = 20_000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            body = i.to_bytes(4, "little")
            scoped = ScopedKey.of(f"{i:032x}", "router-7", ["a"], fingerprint(body))
            keys.record(scoped, 10_000 + i, START + i)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used <= keys.used_bytes == count * entry_size(f"{0:032x}", scope_of("router-7", ["a"]))
