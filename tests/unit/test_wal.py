from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from metaas.server.ingest.wal import WalError, WriteAheadLog, list_segments, read_segment

GENERATION = "00112233445566ff"


async def test_appends_are_durable_in_order_and_applied_once(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, GENERATION)
    await wal.open(b"head")
    applied: list[int] = []
    results = await asyncio.gather(
        *(wal.append(f"r{i}".encode(), lambda i=i: applied.append(i) or i) for i in range(100))
    )
    await wal.close()
    assert results == list(range(100))
    assert applied == list(range(100))
    (segment,) = list_segments(tmp_path)
    assert list(read_segment(segment.path)) == [b"head"] + [f"r{i}".encode() for i in range(100)]


async def test_rotation_seals_exactly_the_records_applied_before_it(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, GENERATION)
    await wal.open(b"h1")
    applied: list[int] = []
    first = [
        asyncio.create_task(wal.append(b"a", lambda i=i: applied.append(i))) for i in range(10)
    ]
    await asyncio.sleep(0)  # the writer takes the batch
    sealed = await wal.rotate(lambda: b"h2", lambda epoch: (epoch, list(applied)))
    await asyncio.gather(*first)
    await wal.append(b"b", lambda: applied.append(99))
    await wal.close()
    epoch, seen = sealed
    segments = list_segments(tmp_path)
    assert [s.epoch for s in segments] == [1, 2]
    assert epoch == 1
    in_first = list(read_segment(segments[0].path))[1:]
    # The snapshot taken at rotation matches the sealed segment's records.
    assert len(in_first) == len(seen)
    assert next(read_segment(segments[1].path)) == b"h2"


async def test_torn_tail_is_ignored_on_replay(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, GENERATION)
    await wal.open(b"head")
    await wal.append(b"complete", lambda: None)
    await wal.close()
    (segment,) = list_segments(tmp_path)
    with segment.path.open("ab") as file:
        file.write(b"\x10\x00\x00\x00garbage")  # a frame cut short by a crash
    assert list(read_segment(segment.path)) == [b"head", b"complete"]
    data = bytearray(segment.path.read_bytes())
    data[-12] ^= 0xFF  # corrupt a byte of the last complete record
    segment.path.write_bytes(bytes(data))
    assert list(read_segment(segment.path)) == [b"head"]


async def test_cancelled_caller_is_still_applied(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, GENERATION)
    await wal.open(b"head")
    applied: list[str] = []
    task = asyncio.create_task(wal.append(b"x", lambda: applied.append("x")))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wal.close()
    assert applied == ["x"]


async def test_failed_write_leaves_nothing_behind_and_log_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from metaas.server.ingest import wal as wal_module

    wal = WriteAheadLog(tmp_path, GENERATION)
    await wal.open(b"head")
    real = wal_module._write_all

    def half_then_full_disk(fd: int, data: memoryview) -> None:
        real(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(wal_module, "_write_all", half_then_full_disk)
    applied: list[bytes] = []
    with pytest.raises(WalError):
        await wal.append(b"rejected", lambda: applied.append(b"rejected"))
    monkeypatch.setattr(wal_module, "_write_all", real)
    await wal.append(b"accepted", lambda: applied.append(b"accepted"))
    await wal.close()
    assert applied == [b"accepted"]
    (segment,) = list_segments(tmp_path)
    assert list(read_segment(segment.path)) == [b"head", b"accepted"]
