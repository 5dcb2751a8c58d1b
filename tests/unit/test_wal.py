from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from metaas.server.ingest.wal import (
    WalError,
    WalLocked,
    WriteAheadLog,
    list_segments,
    read_segment,
)

GENERATION = "00112233445566ff"
OTHER = "ffeeddccbbaa9988"


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


async def test_a_second_log_on_a_locked_directory_is_refused_naming_the_holder(
    tmp_path: Path,
) -> None:
    first = WriteAheadLog(tmp_path / "wal", GENERATION)
    await first.open(b"head")
    second = WriteAheadLog(tmp_path / "wal", OTHER)
    with pytest.raises(WalLocked) as refused:
        await second.open(b"other head")
    await second.close()
    assert refused.value.holder_pid == os.getpid()
    assert refused.value.directory == (tmp_path / "wal").resolve()
    assert str(tmp_path / "wal") in str(refused.value)
    assert f"pid={os.getpid()}" in str(refused.value)
    assert [s.generation for s in list_segments(tmp_path / "wal")] == [GENERATION]
    await first.close()  # releases the lock
    third = WriteAheadLog(tmp_path / "wal", OTHER)
    await third.open(b"head")
    await third.close()


async def test_the_lock_of_a_killed_process_is_released(tmp_path: Path) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from metaas.server.ingest.wal import WriteAheadLog\n"
        "async def main():\n"
        f"    await WriteAheadLog(Path(sys.argv[1]), '{OTHER}').acquire()\n"
        "    print('locked', flush=True)\n"
        "    sys.stdin.read()\n"
        "asyncio.run(main())\n",
        str(tmp_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"locked\n"
        wal = WriteAheadLog(tmp_path, GENERATION)
        with pytest.raises(WalLocked) as refused:
            await wal.acquire()
        assert refused.value.holder_pid == holder.pid
        holder.send_signal(signal.SIGKILL)  # no chance to release anything
        await holder.wait()
        await wal.acquire()
        await wal.close()
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def test_a_failed_delete_raises_and_its_bytes_leave_the_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = WriteAheadLog(tmp_path, GENERATION)
    await wal.open(b"head")
    await wal.append(b"x" * 1000, lambda: None)
    await wal.rotate(lambda: b"head", lambda epoch: epoch)
    sealed, current = list_segments(tmp_path)
    assert wal.backlog_bytes > 1000
    unlink = Path.unlink

    def append_only(path: Path, missing_ok: bool = False) -> None:
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(Path, "unlink", append_only)
    with pytest.raises(PermissionError):
        await wal.delete(sealed)
    # Stored everywhere: not a lag of storage any more, only a file left over.
    assert wal.backlog_bytes < 100
    assert wal.undeleted_bytes > 1000
    monkeypatch.setattr(Path, "unlink", unlink)
    await wal.delete(sealed)
    assert wal.undeleted_bytes == 0
    assert list_segments(tmp_path) == [current]
    await wal.close()


async def test_problems_describe_a_failing_rotation_until_it_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = WriteAheadLog(tmp_path, GENERATION)
    await wal.open(b"head")
    real = wal._start_segment

    def full_disk(epoch: int, head: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(wal, "_start_segment", full_disk)
    with pytest.raises(OSError, match="No space"):
        await wal.rotate(lambda: b"head", lambda epoch: epoch)
    assert wal.problems() == [
        "wal: cannot start a new segment for 0 s: OSError: [Errno 28] No space left on device"
    ]
    monkeypatch.setattr(wal, "_start_segment", real)
    await wal.rotate(lambda: b"head", lambda epoch: epoch)
    assert wal.problems() == []
    await wal.close()
