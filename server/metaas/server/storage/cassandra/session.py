"""cassandra-driver used from asyncio (with cluster.py, the only modules that
import it).

The driver runs its own I/O thread (libev when compiled into the wheel,
otherwise its asyncio reactor on a thread of its own). Every request is sent
with ``execute_async``; its callbacks, which run on the driver's thread, hand
results to the event loop with ``call_soon_threadsafe``. Pages after the first
are requested with ``start_fetching_next_page`` from the same callbacks, so
nothing ever waits on the event loop. Connecting, preparing and shutting down
block, so they run on a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cassandra import (
    AuthenticationFailed,
    CoordinationFailure,
    DriverException,
    InvalidRequest,
    OperationTimedOut,
    ReadTimeout,
    RequestExecutionException,
    RequestValidationException,
    Unauthorized,
    WriteTimeout,
)
from cassandra import Unavailable as DriverUnavailable
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    NoHostAvailable,
)
from cassandra.connection import ConnectionException
from cassandra.protocol import (
    ErrorMessage,
    IsBootstrappingErrorMessage,
    OverloadedErrorMessage,
    ProtocolException,
    ServerError,
)
from cassandra.protocol import RequestValidationException as RequestValidationMessage

from metaas.server.storage.cassandra.cluster import NAME, READ_PROFILE, open_cluster
from metaas.server.storage.cassandra.config import CassandraConfig
from metaas.server.storage.errors import Invalid, StorageError, Throttled, Translator, Unavailable

Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A prepared statement; reads go through the read profile (read
    consistency, speculative execution), writes through the default one."""

    statement: object
    read: bool


class CqlSession:
    """A connected cluster and session, with at most ``max_in_flight``
    requests outstanding from this process."""

    def __init__(self, config: CassandraConfig) -> None:
        self._config = config
        self._cluster: Any = None
        self._session: Any = None
        self._slots = asyncio.Semaphore(config.max_in_flight)

    async def connect(self) -> None:
        """Connect (on a thread: the driver resolves and connects blocking)."""
        try:
            with translated:
                await asyncio.to_thread(self._connect_sync)
        except BaseException:
            await self.close()
            raise

    def _connect_sync(self) -> None:
        self._cluster, session = open_cluster(self._config)
        session.default_fetch_size = self._config.fetch_size
        self._session = session

    async def close(self) -> None:
        cluster, self._cluster, self._session = self._cluster, None, None
        if cluster is not None:
            await asyncio.to_thread(cluster.shutdown)

    async def prepare(self, cql: str, *, read: bool) -> Prepared:
        """Prepare ``cql``. Every statement metaas prepares is idempotent (an
        upsert of the same values or a read), which is what lets the read
        profile execute reads speculatively."""
        session = self._require()
        with translated:
            statement = await asyncio.to_thread(session.prepare, cql)
        statement.is_idempotent = True
        return Prepared(statement, read)

    async def execute(
        self,
        statement: Prepared | str,
        params: Sequence[object] = (),
        *,
        timeout_s: float | None = None,
    ) -> list[Row]:
        """Run one statement and return its first page (all of a small result)."""
        async with self._slots:
            with translated:
                return await _PageStream(self._start(statement, params, timeout_s)).next_page()

    async def for_each_page(
        self,
        statement: Prepared,
        params: Sequence[object],
        handle: Callable[[list[Row]], Awaitable[None]],
    ) -> int:
        """Run a paged query, awaiting ``handle`` on each page in order while
        the next page is already being fetched; returns the number of pages."""
        async with self._slots:
            with translated:
                response = self._start(statement, params, None)
            stream = _PageStream(response)
            pages = 0
            while True:
                with translated:
                    rows = await stream.next_page()
                pages += 1
                more = bool(response.has_more_pages)
                if more:
                    stream.arm()
                    response.start_fetching_next_page()
                await handle(rows)
                if not more:
                    return pages

    async def execute_many(
        self, requests: Iterable[tuple[Prepared, Sequence[object]]]
    ) -> list[list[Row]]:
        """Run every request concurrently, at most ``max_in_flight`` at once;
        returns each one's first page in request order, or raises the first
        error once all have finished."""
        pending: list[asyncio.Future[list[Row]]] = []
        with translated:
            for statement, params in requests:
                await self._slots.acquire()
                try:
                    future = _PageStream(self._start(statement, params, None)).future
                except BaseException:
                    self._slots.release()
                    raise
                future.add_done_callback(self._release)
                pending.append(future)
            pages: list[list[Row]] = []
            for result in await asyncio.gather(*pending, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result
                pages.append(result)
            return pages

    def _release(self, future: asyncio.Future[list[Row]]) -> None:
        self._slots.release()
        if not future.cancelled():
            future.exception()  # retrieved: an abandoned failure is not logged as lost

    def _start(
        self, statement: Prepared | str, params: Sequence[object], timeout_s: float | None
    ) -> Any:
        session = self._require()
        query: object
        if isinstance(statement, str):
            query, read = statement, False
        else:
            query, read = statement.statement, statement.read
        profile = READ_PROFILE if read else EXEC_PROFILE_DEFAULT
        kwargs: dict[str, object] = {"execution_profile": profile}
        if timeout_s is not None:
            kwargs["timeout"] = timeout_s
        return session.execute_async(query, list(params) or None, **kwargs)

    def _require(self) -> Any:
        if self._session is None:
            raise Unavailable("cassandra session is not open", backend=NAME)
        return self._session


class _PageStream:
    """Bridges one ResponseFuture's callbacks (driver thread) to an asyncio
    future per page (event loop)."""

    def __init__(self, response: Any) -> None:
        self._loop = asyncio.get_running_loop()
        self.future: asyncio.Future[list[Row]] = self._loop.create_future()
        response.add_callbacks(self._on_rows, self._on_error)

    def arm(self) -> None:
        """Expect another page (call before requesting it)."""
        self.future = self._loop.create_future()

    async def next_page(self) -> list[Row]:
        return await self.future

    def _on_rows(self, rows: list[Row] | None) -> None:
        self._hand_over(rows if rows is not None else [], None)

    def _on_error(self, error: BaseException) -> None:
        self._hand_over(None, error)

    def _hand_over(self, rows: list[Row] | None, error: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self._loop.call_soon_threadsafe(self._deliver, self.future, rows, error)

    @staticmethod
    def _deliver(
        future: asyncio.Future[list[Row]], rows: list[Row] | None, error: BaseException | None
    ) -> None:
        if future.done():  # cancelled by the awaiting task
            return
        if error is not None:
            future.set_exception(error)  # translated where it is awaited
        else:
            future.set_result(rows if rows is not None else [])


def _classify(error: Exception) -> StorageError | None:
    """The domain error for a driver error; None for anything else."""
    message = f"{type(error).__name__}: {error}"
    if isinstance(error, OverloadedErrorMessage):
        return Throttled(message)
    if isinstance(error, NoHostAvailable):
        causes = list(getattr(error, "errors", {}).values())
        if causes and all(isinstance(c, OverloadedErrorMessage) for c in causes):
            return Throttled(message)
        return Unavailable(message)
    if isinstance(error, (AuthenticationFailed, Unauthorized)):
        return Invalid(message)
    if isinstance(
        error,
        (
            DriverUnavailable,
            ReadTimeout,
            WriteTimeout,
            CoordinationFailure,
            OperationTimedOut,
            ConnectionException,
            IsBootstrappingErrorMessage,
            ServerError,
            RequestExecutionException,
            OSError,
        ),
    ):
        return Unavailable(message)
    if isinstance(
        error,
        (InvalidRequest, RequestValidationException, RequestValidationMessage, ProtocolException),
    ):
        return Invalid(message)
    if isinstance(error, (ErrorMessage, DriverException)):
        return Unavailable(message)
    return None


# Every driver call of the session is made inside it: ``with translated:``.
translated: Final = Translator(NAME, _classify)


__all__ = ["NAME", "CqlSession", "Prepared", "Row", "translated"]
