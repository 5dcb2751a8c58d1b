"""Shadow reads in worker processes.

A shadow read costs as much CPU as the read it shadows (decoding and merging
sketches). Run on the serving event loop, it competes with the next requests
and at a check ratio of 1.0 roughly doubles the served latency. With
``--shadow-workers N`` the router hands each shadow query to one of N worker
processes instead. Each worker opens its own connections to both backends
(from the same URLs) and runs the same query engine, so the serving loop only
pickles the query and the answer, and the shadow's CPU work runs on other
cores.

What changes with workers: the shadow backend's per-call spans and metrics
are not recorded (the worker has no telemetry); the comparison still carries
the shadow read's duration, measured in the worker, to the RPC span, the
counters and the migration status.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from metaas.server.config import CodecConfig
from metaas.server.migration.compare import Observation
from metaas.server.migration.stages import Role
from metaas.server.query import QueryEngine, RangeQuery, ResultGroup
from metaas.server.storage import Storage, StorageContext, open_storage
from metaas.server.storage.errors import StorageError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Setup:
    urls: dict[str, str]  # role -> storage URL
    retention_ms: int
    codec: CodecConfig


class ShadowPool:
    """Worker processes that answer shadow queries; see the module docstring."""

    def __init__(
        self,
        urls: Mapping[Role, str],
        names: Mapping[Role, str],
        *,
        workers: int,
        retention_ms: int,
        codec: CodecConfig,
    ) -> None:
        setup = _Setup({role.value: url for role, url in urls.items()}, retention_ms, codec)
        self._names = dict(names)
        self._workers = workers
        # spawn: a fresh interpreter, nothing inherited from the server's
        # threads (gRPC, SQLite, drivers).
        self._executor = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start,
            initargs=(setup,),
        )

    async def start(self) -> None:
        """Start every worker and open its backends before the first shadow
        read, so that none waits for a process to start."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self._executor, _ready) for _ in range(2 * self._workers))
        )
        log.info("%d shadow read worker process(es) ready", self._workers)

    async def read(self, role: Role, query: RangeQuery) -> Observation:
        loop = asyncio.get_running_loop()
        name = self._names[role]
        try:
            groups, duration_s, error = await loop.run_in_executor(
                self._executor, _read, role.value, query
            )
        except BrokenProcessPool as broken:  # a worker died: no comparison, no crash
            return Observation(role.value, name, 0.0, error=f"shadow worker failed: {broken!r}")
        if error is not None:
            return Observation(role.value, name, duration_s, error=error)
        return Observation(role.value, name, duration_s, value=groups)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


# -- in the worker process ----------------------------------------------------

_loop: asyncio.AbstractEventLoop | None = None
_storages: dict[str, Storage] = {}
_engine: QueryEngine | None = None


def _start(setup: _Setup) -> None:
    global _loop, _engine
    _loop = asyncio.new_event_loop()
    context = StorageContext(setup.retention_ms, codec=setup.codec)
    _engine = QueryEngine(retention_ms=setup.retention_ms, clock=context.clock)
    for role, url in setup.urls.items():
        _storages[role] = _loop.run_until_complete(open_storage(url, context))


def _ready() -> bool:
    time.sleep(0.05)  # lets the pool hand the other warm-up calls to other workers
    return True


def _read(role: str, query: RangeQuery) -> tuple[tuple[ResultGroup, ...], float, str | None]:
    assert _loop is not None
    assert _engine is not None
    started = time.perf_counter()
    try:
        groups = _loop.run_until_complete(_engine.query_range(_storages[role], query))
    except StorageError as error:
        return (), time.perf_counter() - started, repr(error)
    return tuple(groups), time.perf_counter() - started, None
