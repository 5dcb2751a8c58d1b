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
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, TypeVar

_T = TypeVar("_T")
_FRAME: Final = struct.Struct("<II")
_MAGIC: Final = b"MWAL\x01"
_NAME: Final = re.compile(r"^(?P<generation>[0-9a-f]{16})-(?P<epoch>\d{12})\.wal$")
log = logging.getLogger(__name__)


class WalError(Exception):
    """The log could not make a record durable; the record is not applied."""


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
        self._file: IO[bytes] | None = None
        self._epoch = 0
        self._failed: str | None = None
        self.bytes_written = 0

    @property
    def epoch(self) -> int:
        """Epoch of the segment being appended to."""
        return self._epoch

    async def open(self, head: bytes) -> None:
        """Start the first segment of this generation with ``head`` as its
        first record."""
        await self._in_thread(self.directory.mkdir, parents=True, exist_ok=True)
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
            await self._in_thread(self._start_segment, epoch + 1, head())
            return sealed(epoch)

    async def delete(self, segment: Segment) -> None:
        await self._in_thread(segment.path.unlink, missing_ok=True)

    async def delete_through(self, epoch: int) -> None:
        """Delete this generation's sealed segments up to ``epoch``."""
        for segment in list_segments(self.directory):
            if segment.generation == self.generation and segment.epoch <= min(
                epoch, self._epoch - 1
            ):
                await self.delete(segment)

    async def close(self) -> None:
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)
        async with self._lock:
            if self._file is not None:
                await self._in_thread(self._file.close)
                self._file = None
        self._thread.shutdown(wait=True)

    async def _write_pending(self) -> None:
        while self._pending:
            async with self._lock:
                batch, self._pending = self._pending, []
                try:
                    await self._in_thread(self._write_sync, [a.payload for a in batch])
                except OSError as error:
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(WalError(f"write-ahead log: {error}"))
                    continue
                for item in batch:
                    try:
                        result = item.apply()
                    except Exception as error:
                        if not item.future.done():
                            item.future.set_exception(error)
                    else:
                        if not item.future.done():
                            item.future.set_result(result)

    def _write_sync(self, payloads: list[bytes]) -> None:
        file = self._file
        if file is None:
            raise OSError("write-ahead log is not open")
        data = b"".join(_frame(p) for p in payloads)
        position = file.tell()
        try:
            file.write(data)
            file.flush()
            if self._fsync:
                os.fdatasync(file.fileno())
        except OSError:
            # Cut the partial batch off so later records stay readable; if even
            # that fails, stop accepting writes rather than ack unreadable ones.
            try:
                file.truncate(position)
                file.seek(position)
                os.fsync(file.fileno())
            except OSError as error:
                self._failed = f"write-ahead log unusable after a failed write: {error}"
                log.critical(self._failed)
            raise
        self.bytes_written += len(data)

    def _start_segment(self, epoch: int, head: bytes) -> None:
        segment = Segment.named(self.directory, self.generation, epoch)
        file = segment.path.open("xb")
        file.write(_MAGIC + _frame(head))
        file.flush()
        if self._fsync:
            os.fsync(file.fileno())
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        if self._file is not None:
            self._file.close()
        self._file, self._epoch = file, epoch

    async def _in_thread(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: function(*args, **kwargs))
