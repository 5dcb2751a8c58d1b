"""A segmented write-ahead log with group commit.

Appends wait in memory until the single writer takes all of them, writes them
in one ``write`` plus ``fdatasync`` on a dedicated thread, then applies each to
the in-memory state in append order and resolves its caller. So an
acknowledged record is on disk, and the in-memory state holds exactly the
records of the segments written so far.

The log is cut into segments named ``<generation>-<epoch>.wal``. Each server
run has its own generation; each flush seals the current segment (epoch ``e``)
and opens ``e + 1`` under the same lock that applies records, so a flush sees
exactly the records of segments ``<= e``. A segment is deleted once its data is
in storage. Frames are ``length, crc32, payload``; a torn or corrupt tail
(from a crash mid-write, before any acknowledgement) ends a segment on replay.

One process at a time owns a log directory: ``acquire`` takes an exclusive
``flock`` on its ``LOCK`` file (which names the holder) before anything reads
the directory, and holds it until ``close`` or the process ends. A second
server on the same directory would replay the first one's live segments.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import functools
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from metaas.server.retry import describe_error

_T = TypeVar("_T")
_FRAME: Final = struct.Struct("<II")
_MAGIC: Final = b"MWAL\x01"
_NAME: Final = re.compile(r"^(?P<generation>[0-9a-f]{16})-(?P<epoch>\d{12})\.wal$")
LOCK_NAME: Final = "LOCK"
_HOLDER_PID: Final = re.compile(r"\bpid=(\d+)")
log = logging.getLogger(__name__)


class WalError(Exception):
    """The log could not make a record durable; the record is not applied."""


class WalLocked(WalError):
    """Another process holds the log directory's lock."""

    def __init__(self, directory: Path, holder: str) -> None:
        self.directory = directory
        self.holder = holder  # as the holder wrote it: "pid=123 started=..."
        found = _HOLDER_PID.search(holder)
        self.holder_pid = int(found[1]) if found else None
        super().__init__(
            f"write-ahead log directory {directory} is in use by another metaas process "
            f"({holder or 'holder unknown'}); stop it or give this server its own WAL directory"
        )


SegmentId = tuple[str, int]  # (writer generation, epoch)


@dataclass(frozen=True, slots=True, order=True)
class Segment:
    generation: str
    epoch: int
    path: Path

    @classmethod
    def named(cls, directory: Path, generation: str, epoch: int) -> Segment:
        return cls(generation, epoch, directory / f"{generation}-{epoch:012d}.wal")


def list_segments(directory: Path) -> list[Segment]:
    """Segments in ``directory``, ordered by generation then epoch."""
    if not directory.exists():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append(Segment(match["generation"], int(match["epoch"]), path))
    return sorted(found)


def read_segment(path: Path) -> Iterator[bytes]:
    """Payloads of a segment in order, up to a torn or corrupt tail."""
    data = path.read_bytes()
    if not data.startswith(_MAGIC):
        log.error("wal segment %s has no valid header; skipped", path.name)
        return
    position = len(_MAGIC)
    while position + _FRAME.size <= len(data):
        length, checksum = _FRAME.unpack_from(data, position)
        start = position + _FRAME.size
        payload = data[start : start + length]
        if len(payload) != length or zlib.crc32(payload) != checksum:
            log.warning("wal segment %s: torn tail at byte %d ignored", path.name, position)
            return
        yield payload
        position = start + length


def _frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass(slots=True)
class _Append:
    payload: bytes
    apply: Callable[[], Any]
    future: asyncio.Future[Any]


class WriteAheadLog:
    """See the module docstring. Not thread-safe: use from one event loop."""

    def __init__(self, directory: Path, generation: str, *, fsync: bool = True) -> None:
        self.directory = directory
        self.generation = generation
        self._fsync = fsync
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="wal")
        self._lock = asyncio.Lock()
        self._pending: list[_Append] = []
        self._writer: asyncio.Task[None] | None = None
        self._fd: int | None = None
        self._size = 0  # bytes in the open segment
        self._epoch = 0
        self._failed: str | None = None
        self._lock_fd: int | None = None
        # (monotonic time of the first failure in a row, the latest error)
        self._write_failing: tuple[float, BaseException] | None = None
        self._rotate_failing: tuple[float, BaseException] | None = None
        # Sizes of sealed (and earlier runs') segments whose data is not stored yet.
        self._backlog: dict[Path, int] = {}
        # Sizes of segments stored everywhere whose deletion failed so far.
        self._undeleted: dict[Path, int] = {}

    @property
    def backlog_bytes(self) -> int:
        """Bytes in segments whose data is not yet stored everywhere,
        including the open one."""
        return sum(self._backlog.values()) + self._size

    def track(self, segment: Segment) -> None:
        """Count an earlier run's segment in the backlog until it is deleted."""
        with contextlib.suppress(OSError):
            self._backlog[segment.path] = segment.path.stat().st_size

    @property
    def undeleted_bytes(self) -> int:
        """Bytes in segments stored everywhere that could not be deleted yet."""
        return sum(self._undeleted.values())

    @property
    def epoch(self) -> int:
        """Epoch of the segment being appended to."""
        return self._epoch

    def problems(self) -> list[str]:
        """One line per failing step of the log itself; empty when healthy."""
        now = time.monotonic()
        found = []
        if self._failed is not None:
            found.append(f"wal: {self._failed}")
        if self._write_failing is not None:
            since, error = self._write_failing
            found.append(f"wal: writes failing for {now - since:.0f} s: {describe_error(error)}")
        if self._rotate_failing is not None:
            since, error = self._rotate_failing
            found.append(
                f"wal: cannot start a new segment for {now - since:.0f} s: {describe_error(error)}"
            )
        return found

    async def acquire(self) -> None:
        """Create the directory and take its lock for as long as this log is
        open (or the process lives). Call before reading the directory.
        Raises WalLocked, naming the holder, if another process has it."""
        if self._lock_fd is None:
            self._lock_fd = await self._in_thread(_lock_directory, self.directory)

    async def open(self, head: bytes) -> None:
        """Take the directory's lock if not held yet, then start the first
        segment of this generation with ``head`` as its first record."""
        await self.acquire()
        await self._in_thread(self._start_segment, 1, head)

    async def append(self, payload: bytes, apply: Callable[[], _T]) -> _T:
        """Make ``payload`` durable, then call ``apply`` (in append order) and
        return its result. ``apply`` runs even if the caller was cancelled
        meanwhile, because the record is durable by then."""
        if self._failed is not None:
            raise WalError(self._failed)
        future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        self._pending.append(_Append(payload, apply, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="wal-writer")
        return await future

    async def rotate(self, head: Callable[[], bytes], sealed: Callable[[int], _T]) -> _T:
        """Seal the current segment and start the next one with ``head()`` as
        its first record; ``sealed(epoch)`` runs before any later record is
        applied, and its result is returned."""
        async with self._lock:
            epoch = self._epoch
            try:
                await self._in_thread(self._start_segment, epoch + 1, head())
            except Exception as error:
                since = self._rotate_failing[0] if self._rotate_failing else time.monotonic()
                self._rotate_failing = (since, error)
                raise
            self._rotate_failing = None
            return sealed(epoch)

    async def delete(self, segment: Segment) -> None:
        """Delete a segment whose data is stored everywhere. From then on its
        bytes no longer count in ``backlog_bytes``, even if unlinking fails
        (the error is raised; the caller retries)."""
        size = self._backlog.pop(segment.path, None)
        if size is not None:
            self._undeleted[segment.path] = size
        await self._in_thread(segment.path.unlink, missing_ok=True)
        self._undeleted.pop(segment.path, None)

    async def close(self) -> None:
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)
        async with self._lock:
            await self._in_thread(self._close_sync)
        self._thread.shutdown(wait=True)

    async def _write_pending(self) -> None:
        while self._pending:
            async with self._lock:
                batch, self._pending = self._pending, []
                try:
                    await self._in_thread(self._write_sync, [a.payload for a in batch])
                except Exception as error:  # noqa: BLE001 - every waiter gets it
                    since = self._write_failing[0] if self._write_failing else time.monotonic()
                    self._write_failing = (since, error)
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(WalError(f"write-ahead log: {error}"))
                    continue
                self._write_failing = None
                for item in batch:
                    try:
                        result = item.apply()
                    except Exception as error:  # noqa: BLE001 - the caller gets it
                        if not item.future.done():
                            item.future.set_exception(error)
                    else:
                        if not item.future.done():
                            item.future.set_result(result)

    def _write_sync(self, payloads: list[bytes]) -> None:
        if self._failed is not None:
            raise OSError(self._failed)
        if self._fd is None:
            raise OSError("write-ahead log is not open")
        data = memoryview(b"".join(_frame(p) for p in payloads))
        position = self._size
        try:
            _write_all(self._fd, data)
            if self._fsync:
                os.fdatasync(self._fd)
        except OSError:
            # Cut the partial batch off so later records stay readable; if even
            # that fails, refuse writes from now on rather than acknowledge
            # records a replay could not reach.
            try:
                os.ftruncate(self._fd, position)
                os.fsync(self._fd)
            except OSError as error:
                self._failed = f"write-ahead log unusable after a failed write: {error}"
                log.critical(self._failed)
            raise
        self._size = position + len(data)

    def _start_segment(self, epoch: int, head: bytes) -> None:
        path = Segment.named(self.directory, self.generation, epoch).path
        data = _MAGIC + _frame(head)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            _write_all(fd, memoryview(data))
            if self._fsync:
                os.fsync(fd)
                directory = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        if self._fd is not None:
            sealed = Segment.named(self.directory, self.generation, self._epoch).path
            self._backlog[sealed] = self._size
        previous, self._fd, self._epoch, self._size = self._fd, fd, epoch, len(data)
        if previous is not None:
            os.close(previous)

    def _close_sync(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):  # the holder's line is stale from now on
                os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    async def _in_thread(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run on the log's thread. A cancelled caller still waits for the
        thread to finish, so nobody observes the log half-changed."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._thread, functools.partial(function, *args, **kwargs))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([future])
            raise


def _lock_directory(directory: Path) -> int:
    """Create ``directory``, take the exclusive lock on its LOCK file and
    write this process's pid and start time in it; return the locked fd."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WalLocked(directory.resolve(), _read_holder(path)) from None
    except BaseException:
        os.close(fd)
        raise
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    try:
        os.ftruncate(fd, 0)
        _write_all(fd, memoryview(f"pid={os.getpid()} started={started}\n".encode()))
    except OSError as error:  # the lock holds all the same; only its label is missing
        log.warning("could not record this process in %s: %s", path, error)
    return fd


def _read_holder(path: Path) -> str:
    """The holder's line in a LOCK file. A holder that has just taken the
    lock may not have written it yet: wait a moment for it."""
    for _ in range(20):
        with contextlib.suppress(OSError):
            text = path.read_text(errors="replace").strip()
            if text:
                return text[:200]  # a line written by a holder; bounded all the same
        time.sleep(0.025)
    return ""


def _write_all(fd: int, data: memoryview) -> None:
    written = 0
    while written < len(data):
        written += os.write(fd, data[written:])
