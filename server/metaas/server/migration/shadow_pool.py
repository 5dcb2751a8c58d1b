"""Shadow reads and comparisons in worker processes.

A shadow read costs as much CPU as the read it shadows (decoding and merging
sketches). Run on the serving event loop it competes with the next requests,
and at a check ratio of 1.0 it roughly doubles the served latency. With
``--shadow-workers N`` the router instead hands each sampled query, with the
answer it served, to one of N worker processes. The worker reads the shadow
backend through its own connections (opened from the same URLs), runs the
same query engine, compares, and sends back only the duration and the
differences. The serving process pickles a few kilobytes each way over a
pipe watched by its own event loop: no extra threads, so nothing contends
with the serving loop for the interpreter lock.

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
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from metaas.server.config import CodecConfig
from metaas.server.migration.compare import compare_results
from metaas.server.migration.stages import Role
from metaas.server.query import QueryEngine, RangeQuery, ResultGroup
from metaas.server.storage import Storage, StorageContext, open_storage
from metaas.server.storage.errors import StorageError

log = logging.getLogger(__name__)
_START_TIMEOUT_S = 120.0
# Added to the workers' nice value (lower CPU priority than the server).
_NICENESS = 10
# Tasks a worker may have queued; beyond it checks are skipped (and counted).
MAX_QUEUED = 32


@dataclass(frozen=True, slots=True)
class Setup:
    urls: dict[str, str]  # role -> storage URL
    retention_ms: int
    codec: CodecConfig


@dataclass(frozen=True, slots=True)
class Task:
    """What a worker needs to check one served answer."""

    role: str  # the shadow backend's role
    query: RangeQuery
    primary: tuple[ResultGroup, ...]
    stat_names: tuple[str, ...]
    relative_tolerance: float
    newer_than_ms: int


@dataclass(frozen=True, slots=True)
class Checked:
    """A worker's verdict: the shadow read's duration, and its error or the
    differences from the served answer (none: consistent)."""

    duration_s: float
    error: str | None = None
    diff: tuple[str, ...] = ()


@dataclass(slots=True)
class _Worker:
    process: BaseProcess
    connection: Connection
    pending: dict[int, asyncio.Future[Checked]] = field(default_factory=dict)
    alive: bool = True


class ShadowPool:
    """Worker processes that check served answers; see the module docstring."""

    def __init__(self, setup: Setup, *, workers: int) -> None:
        self._setup = setup
        self._size = workers
        self._workers: list[_Worker] = []
        self._ids = itertools.count()

    async def start(self) -> None:
        """Start every worker and wait until each has opened its backends, so
        no shadow read waits for a process to start."""
        context = multiprocessing.get_context("spawn")  # nothing inherited
        loop = asyncio.get_running_loop()
        for index in range(self._size):
            mine, theirs = context.Pipe()
            process = context.Process(
                target=_serve,
                args=(theirs, self._setup),
                name=f"metaas-shadow-{index}",
                daemon=True,
            )
            process.start()
            theirs.close()
            self._workers.append(_Worker(process, mine))
        for worker in self._workers:
            ready = await asyncio.wait_for(
                loop.run_in_executor(None, _receive, worker.connection), _START_TIMEOUT_S
            )
            if ready != b"ready":
                raise RuntimeError(
                    f"shadow worker failed to start: {ready.decode(errors='replace')}"
                )
            loop.add_reader(worker.connection.fileno(), self._on_reply, worker)
        log.info("%d shadow worker process(es) ready", self._size)

    async def check(self, task: Task) -> Checked | None:
        """The worker's verdict on ``task`` (an error verdict if none is
        alive), or None when every worker already has ``MAX_QUEUED`` tasks:
        checking is shed under load rather than queued without bound."""
        alive = [w for w in self._workers if w.alive]
        if not alive:
            return Checked(0.0, error="no shadow worker is running")
        worker = min(alive, key=lambda w: len(w.pending))
        if len(worker.pending) >= MAX_QUEUED:
            return None
        request_id = next(self._ids)
        future: asyncio.Future[Checked] = asyncio.get_running_loop().create_future()
        # Stays until the worker replies (even if the caller stops waiting):
        # the worker's queue, as the bound above sees it.
        worker.pending[request_id] = future
        try:
            worker.connection.send_bytes(pickle.dumps((request_id, task)))
        except OSError as error:
            self._lost(worker, error)
        return await future

    def _on_reply(self, worker: _Worker) -> None:
        try:
            request_id, checked = pickle.loads(worker.connection.recv_bytes())  # noqa: S301 - our own worker, over a private pipe
        except (EOFError, OSError) as error:
            self._lost(worker, error)
            return
        future = worker.pending.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(checked)

    def _lost(self, worker: _Worker, error: BaseException) -> None:
        log.error("shadow worker %s exited: %r", worker.process.name, error)
        worker.alive = False
        asyncio.get_running_loop().remove_reader(worker.connection.fileno())
        for future in worker.pending.values():
            if not future.done():
                future.set_result(Checked(0.0, error=f"shadow worker exited: {error!r}"))
        worker.pending.clear()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for worker in self._workers:
            if worker.alive:
                loop.remove_reader(worker.connection.fileno())
            with contextlib.suppress(OSError):
                worker.connection.send_bytes(b"")  # asks the worker to stop
            worker.connection.close()
        await asyncio.to_thread(self._join)

    def _join(self) -> None:
        for worker in self._workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        self._workers.clear()


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
    engine = QueryEngine(retention_ms=setup.retention_ms, clock=context.clock)
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


async def _check(engine: QueryEngine, storage: Storage, task: Task) -> Checked:
    started = time.perf_counter()
    try:
        groups: Sequence[ResultGroup] = await engine.query_range(storage, task.query)
    except StorageError as error:
        return Checked(time.perf_counter() - started, error=repr(error))
    duration_s = time.perf_counter() - started
    diff = compare_results(
        task.primary,
        groups,
        task.stat_names,
        relative_tolerance=task.relative_tolerance,
        newer_than_ms=task.newer_than_ms,
    )
    return Checked(duration_s, diff=diff)


def setup_of(urls: Mapping[Role, str], *, retention_ms: int, codec: CodecConfig) -> Setup:
    return Setup({role.value: url for role, url in urls.items()}, retention_ms, codec)
