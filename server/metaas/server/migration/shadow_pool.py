"""Shadow reads and comparisons in worker processes.

A shadow read costs as much CPU as the read it shadows (decoding and merging
sketches). Run on the serving event loop it competes with the next requests,
and at a check ratio of 1.0 it roughly doubles the served latency. With
``--shadow-workers N`` the router instead hands each sampled query, with the
answer it served, to one of N worker processes. The worker reads the shadow
backend through its own connections (opened from the same URLs), runs the
same query engine, compares, and sends back only the duration and the
differences.

The serving process writes each task to its worker's socket without blocking
(asyncio ``sock_sendall``) and reads verdicts the same way: no extra threads
contend with the serving loop for the interpreter lock. Workers run at a
lower CPU priority.

Checking is best effort and never slows or fails an answer. A check is
*skipped* (counted, but neither consistent nor a mismatch) when every worker
already has ``MAX_QUEUED`` tasks, when the served answer holds more than
``MAX_TASK_VALUES`` values, when a task waited in the queue past its
deadline, or when no worker is alive (a worker that stops is restarted,
with backoff). A shadow read that fails or takes longer than the shadow
timeout is an error verdict, as it is on the serving loop.

What changes with workers: the shadow backend's per-call spans and metrics
are not recorded (the worker has no telemetry). The comparison still carries
the shadow read's duration, measured in the worker, to the RPC span, the
counters and the migration status.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import pickle
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from metaas.server.config import CodecConfig, ViewsConfig
from metaas.server.migration.compare import compare_results
from metaas.server.migration.stages import Role
from metaas.server.query import QueryEngine, RangeQuery, ResultGroup
from metaas.server.storage import Storage, StorageContext, open_storage

log = logging.getLogger(__name__)
_START_TIMEOUT_S = 120.0
# Added to the workers' nice value (lower CPU priority than the server).
_NICENESS = 10
# A worker that stopped is restarted after this, then after twice as long
# each time it fails to start, up to the maximum.
_RESPAWN_FIRST_S = 1.0
_RESPAWN_MAX_S = 60.0
# Tasks a worker may have queued; beyond it checks are skipped.
MAX_QUEUED = 32
# A served answer with more values than this is not sent to a worker (about
# 2 MB pickled; sending is asynchronous, pickling is not).
MAX_TASK_VALUES = 200_000
# multiprocessing.Connection's framing: a 4-byte big-endian length.
_FRAME = struct.Struct("!i")


@dataclass(frozen=True, slots=True)
class Setup:
    urls: dict[str, str]  # role -> storage URL
    retention_ms: int
    codec: CodecConfig
    rollups_from_ms: int = 0
    views: ViewsConfig | None = None


@dataclass(frozen=True, slots=True)
class CheckTask:
    """What a worker needs to check one served answer."""

    role: str  # the shadow backend's role
    query: RangeQuery
    primary: tuple[ResultGroup, ...]
    stat_names: tuple[str, ...]
    relative_tolerance: float
    newer_than_ms: int
    timeout_s: float  # the shadow read's own bound
    start_by_s: float  # wall clock: a task still queued then is skipped


@dataclass(frozen=True, slots=True)
class Checked:
    """A worker's verdict: the shadow read's duration, and its error or the
    differences from the served answer (none: consistent)."""

    duration_s: float
    error: str | None = None
    diff: tuple[str, ...] = ()
    skipped: bool = False


@dataclass(slots=True)
class _Worker:
    process: BaseProcess
    sock: socket.socket
    sending: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: dict[int, asyncio.Future[Checked | None]] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None
    alive: bool = True


class ShadowPool:
    """Worker processes that check served answers; see the module docstring."""

    def __init__(self, setup: Setup, *, workers: int) -> None:
        self._setup = setup
        self._size = workers
        self._workers: list[_Worker] = []
        self._ids = itertools.count()
        self._context = multiprocessing.get_context("spawn")  # nothing inherited
        self._respawning: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> None:
        """Start every worker and wait until each has opened its backends, so
        no shadow read waits for a process to start."""
        started = [self._spawn(index) for index in range(self._size)]
        try:
            for spawned, connection in started:
                self._workers.append(await self._attach(spawned, connection))
        except BaseException:
            for spawned, _ in started:
                spawned.kill()
            raise
        finally:
            for _, connection in started:
                connection.close()
        log.info("%d shadow worker process(es) ready", self._size)

    def _spawn(self, index: int) -> tuple[BaseProcess, Connection]:
        mine, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_serve, args=(theirs, self._setup), name=f"metaas-shadow-{index}", daemon=True
        )
        process.start()
        theirs.close()
        return process, mine

    async def _attach(self, process: BaseProcess, connection: Connection) -> _Worker:
        """The worker, once it has opened its backends."""
        loop = asyncio.get_running_loop()
        ready = await asyncio.wait_for(
            loop.run_in_executor(None, _receive, connection), _START_TIMEOUT_S
        )
        if ready != b"ready":
            raise RuntimeError(f"shadow worker failed to start: {ready.decode(errors='replace')}")
        sock = socket.socket(fileno=os.dup(connection.fileno()))
        sock.setblocking(False)
        worker = _Worker(process, sock)
        worker.reader = asyncio.create_task(self._read_verdicts(worker))
        return worker

    async def _replace(self, dead: _Worker) -> None:
        """Start a new worker in place of ``dead``, retrying with backoff."""
        index = next(i for i, worker in enumerate(self._workers) if worker is dead)
        await asyncio.to_thread(_reap, dead.process)
        delay_s = _RESPAWN_FIRST_S
        while not self._closing:
            await asyncio.sleep(delay_s)
            process, connection = self._spawn(index)
            try:
                worker = await self._attach(process, connection)
            except (RuntimeError, TimeoutError, OSError) as error:
                process.kill()
                log.error("shadow worker %d did not restart (%s); retrying", index, error)
                delay_s = min(2 * delay_s, _RESPAWN_MAX_S)
                continue
            finally:
                connection.close()
            dead.sock.close()
            self._workers[index] = worker
            log.info("shadow worker %d restarted", index)
            return

    async def check(self, task: CheckTask) -> Checked | None:
        """The worker's verdict on ``task``, or None when it was skipped (see
        the module docstring)."""
        alive = [w for w in self._workers if w.alive]
        if not alive:
            return None
        worker = min(alive, key=lambda w: len(w.pending))
        if len(worker.pending) >= MAX_QUEUED:
            return None
        values = sum(len(g.times_ms) * (1 + len(g.values)) for g in task.primary)
        if values > MAX_TASK_VALUES:
            return None
        request_id = next(self._ids)
        payload = pickle.dumps((request_id, task), protocol=pickle.HIGHEST_PROTOCOL)
        return await self._send(worker, request_id, payload)

    async def _send(self, worker: _Worker, request_id: int, payload: bytes) -> Checked | None:
        future: asyncio.Future[Checked | None] = asyncio.get_running_loop().create_future()
        # Stays until the worker replies (or dies), even if the caller stops
        # waiting: the worker's queue, as the bound above sees it.
        worker.pending[request_id] = future
        try:
            async with worker.sending:
                await asyncio.get_running_loop().sock_sendall(
                    worker.sock, _FRAME.pack(len(payload)) + payload
                )
        except OSError as error:
            self._lost(worker, error)
        return await future

    async def _read_verdicts(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                (size,) = _FRAME.unpack(await _read_exactly(loop, worker.sock, _FRAME.size))
                message = await _read_exactly(loop, worker.sock, size)
                request_id, checked = pickle.loads(message)  # noqa: S301 - our own worker
                future = worker.pending.pop(request_id, None)
                if future is not None and not future.done():
                    future.set_result(None if checked.skipped else checked)
        except (EOFError, OSError, pickle.UnpicklingError) as error:
            self._lost(worker, error)

    def _lost(self, worker: _Worker, error: BaseException) -> None:
        if worker.alive and not self._closing:
            log.error(
                "shadow worker %s stopped (%r): its checks are skipped until it restarts",
                worker.process.name,
                error,
            )
            task = asyncio.create_task(self._replace(worker))
            self._respawning.add(task)
            task.add_done_callback(self._respawning.discard)
        worker.alive = False
        _abandon(worker)

    async def close(self) -> None:
        self._closing = True
        for task in list(self._respawning):
            task.cancel()
        await asyncio.gather(*self._respawning, return_exceptions=True)
        for worker in self._workers:
            if worker.alive:
                with contextlib.suppress(OSError):
                    async with worker.sending:  # asks the worker to stop
                        await asyncio.get_running_loop().sock_sendall(worker.sock, _FRAME.pack(0))
            worker.alive = False
            if worker.reader is not None:
                worker.reader.cancel()
                await asyncio.gather(worker.reader, return_exceptions=True)
            _abandon(worker)
            worker.sock.close()
        await asyncio.to_thread(self._join)

    def _join(self) -> None:
        for worker in self._workers:
            _reap(worker.process, timeout_s=10)
        self._workers.clear()


def _reap(process: BaseProcess, timeout_s: float = 1.0) -> None:
    """Wait for the process to end (killing it after ``timeout_s``)."""
    process.join(timeout=timeout_s)
    if process.is_alive():
        process.kill()
        process.join()


def _abandon(worker: _Worker) -> None:
    """Its queued checks are skipped: they will get no verdict."""
    for future in worker.pending.values():
        if not future.done():
            future.set_result(None)
    worker.pending.clear()


async def _read_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    parts = []
    while size:
        chunk = await loop.sock_recv(sock, min(size, 1 << 20))
        if not chunk:
            raise EOFError("the worker closed its end")
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def _receive(connection: Connection) -> bytes:
    try:
        return connection.recv_bytes()
    except EOFError:
        return b"the worker exited before it was ready"


# -- in the worker process ----------------------------------------------------


def _serve(connection: Connection, setup: Setup) -> None:
    """Open the backends, then answer tasks one at a time until asked to stop."""
    # Checking is background work: when cores are short, serving goes first.
    with contextlib.suppress(OSError):
        os.nice(_NICENESS)
    loop = asyncio.new_event_loop()
    context = StorageContext(setup.retention_ms, codec=setup.codec)
    engine = QueryEngine(
        retention_ms=setup.retention_ms,
        clock=context.clock,
        rollups_from_ms=setup.rollups_from_ms,
        views=setup.views,
    )
    storages: dict[str, Storage] = {}
    try:
        for role, url in setup.urls.items():
            storages[role] = loop.run_until_complete(open_storage(url, context))
    except Exception as error:  # noqa: BLE001 - reported to the server, which refuses to start
        connection.send_bytes(f"{type(error).__name__}: {error}".encode())
        return
    connection.send_bytes(b"ready")
    try:
        while message := connection.recv_bytes():
            request_id, task = pickle.loads(message)  # noqa: S301 - the server that started us, over a private pipe
            checked = loop.run_until_complete(_check(engine, storages[task.role], task))
            connection.send_bytes(pickle.dumps((request_id, checked)))
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the server went away
    finally:
        for storage in storages.values():
            loop.run_until_complete(storage.close())
        loop.close()


async def _check(engine: QueryEngine, storage: Storage, task: CheckTask) -> Checked:
    if time.time() > task.start_by_s:
        return Checked(0.0, skipped=True)  # waited too long behind other checks
    started = time.perf_counter()
    try:
        groups: Sequence[ResultGroup] = await asyncio.wait_for(
            engine.query_range(storage, task.query), task.timeout_s
        )
    except TimeoutError:
        return Checked(task.timeout_s, error=f"timed out after {task.timeout_s}s")
    except Exception as error:  # noqa: BLE001 - any failure of the shadow read is its verdict
        return Checked(time.perf_counter() - started, error=repr(error))
    duration_s = time.perf_counter() - started
    diff = compare_results(
        task.primary,
        groups,
        task.stat_names,
        relative_tolerance=task.relative_tolerance,
        newer_than_ms=task.newer_than_ms,
        step_ms=task.query.step_ms,
    )
    return Checked(duration_s, diff=diff)


def setup_of(
    urls: Mapping[Role, str],
    *,
    retention_ms: int,
    codec: CodecConfig,
    rollups_from_ms: int = 0,
    views: ViewsConfig | None = None,
) -> Setup:
    return Setup(
        {role.value: url for role, url in urls.items()},
        retention_ms,
        codec,
        rollups_from_ms,
        views,
    )
