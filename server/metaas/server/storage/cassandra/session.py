"""cassandra-driver used from asyncio, and the only module that imports it.

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
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cassandra import (
    AuthenticationFailed,
    ConsistencyLevel,
    CoordinationFailure,
    DriverException,
    InvalidRequest,
    OperationTimedOut,
    ReadTimeout,
    RequestExecutionException,
    RequestValidationException,
    Unauthorized,
    UnresolvableContactPoints,
    WriteTimeout,
)
from cassandra import Unavailable as DriverUnavailable
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
)
from cassandra.connection import ConnectionException
from cassandra.policies import (
    ConstantReconnectionPolicy,
    ConstantSpeculativeExecutionPolicy,
    DCAwareRoundRobinPolicy,
    RetryPolicy,
    TokenAwarePolicy,
)
from cassandra.protocol import (
    ErrorMessage,
    IsBootstrappingErrorMessage,
    OverloadedErrorMessage,
    ProtocolException,
    ServerError,
)
from cassandra.protocol import RequestValidationException as RequestValidationMessage
from cassandra.query import tuple_factory

from metaas.server.config import Settings, setting_of
from metaas.server.storage.cassandra.config import CassandraConfig
from metaas.server.storage.errors import Invalid, StorageError, Throttled, Translator, Unavailable

try:  # The wheel's compiled libev reactor; the asyncio one works everywhere.
    from cassandra.io.libevreactor import LibevConnection as _Connection
except ImportError:  # pragma: no cover - depends on how the driver was built
    from cassandra.io.asyncioreactor import AsyncioConnection as _Connection

NAME: Final = "cassandra"
_READ_PROFILE: Final = "metaas-read"
# Driver-level retries per request; the flusher retries whole flushes with
# backoff on top, so one quick retry on another coordinator is enough here.
_RETRIES: Final = 1
# The URL's setting; the migration target's errors are named by app.py.
_STORAGE: Final = setting_of(Settings, "storage_url").label

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
        config = self._config
        with _driver_logs_held():
            try:
                self._cluster = self._cluster_of(config)
                session = self._cluster.connect()
            except (UnresolvableContactPoints, NoHostAvailable) as error:
                raise _not_reached(config, error) from error
        session.default_fetch_size = config.fetch_size
        self._session = session

    @staticmethod
    def _cluster_of(config: CassandraConfig) -> Any:
        return Cluster(
            contact_points=list(config.hosts),
            port=config.hosts[0][1],
            protocol_version=config.protocol_version,
            execution_profiles=_profiles(config),
            connection_class=_Connection,
            connect_timeout=config.connect_timeout_ms / 1000,
            control_connection_timeout=config.connect_timeout_ms / 1000,
            reconnection_policy=ConstantReconnectionPolicy(1.0, max_attempts=None),
            auth_provider=(
                PlainTextAuthProvider(config.username, config.password or "")
                if config.username is not None
                else None
            ),
            ssl_context=config.ssl_context(),
        )

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
        profile = _READ_PROFILE if read else EXEC_PROFILE_DEFAULT
        kwargs: dict[str, object] = {"execution_profile": profile}
        if timeout_s is not None:
            kwargs["timeout"] = timeout_s
        return session.execute_async(query, list(params) or None, **kwargs)

    def _require(self) -> Any:
        if self._session is None:
            raise Unavailable("cassandra session is not open", backend=NAME)
        return self._session


class _Held(logging.Filter):
    """Keeps the records it sees from being logged."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


@contextlib.contextmanager
def _driver_logs_held() -> Iterator[None]:
    """Hold the driver's log records while connecting. It logs each failed
    attempt with a traceback, then the failure again: when no host answers,
    the one error raised says it all, so they are dropped; once connected,
    they are logged as usual (a host down among others is worth a warning)."""
    held = _Held()
    names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] == "cassandra"]
    loggers = [logging.getLogger(name) for name in names]
    for logger in loggers:
        logger.addFilter(held)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(held)
    for record in held.records:
        logging.getLogger(record.name).handle(record)


def _not_reached(config: CassandraConfig, error: Exception) -> Unavailable:
    """One line naming the hosts that could not be connected to, and why, and
    the setting that names them."""
    unresolved = [name for name, _ in config.hosts if not _resolves(name)]
    if isinstance(error, UnresolvableContactPoints) or len(unresolved) == len(config.hosts):
        names = unresolved or [name for name, _ in config.hosts]
        hosts, do = ("hosts", "do") if len(names) > 1 else ("host", "does")
        return Unavailable(
            f"Cassandra {hosts} {', '.join(names)} {do} not resolve to an address: check the "
            f"host names in {_STORAGE} (cassandra://host[:port][,host[:port]]/keyspace)",
            backend=NAME,
        )
    causes: dict[str, object] = dict(getattr(error, "errors", None) or {})
    reasons = [f"{host} ({_reason(cause)})" for host, cause in causes.items()]
    reasons += [f"{name} (does not resolve to an address)" for name in unresolved]
    return Unavailable(
        f"cannot connect to Cassandra at {', '.join(reasons) or 'any host'}: check that it "
        f"is running there and that {_STORAGE} names its hosts and native port "
        "(9042 by default)",
        backend=NAME,
    )


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
    except OSError:
        return False
    return True


def _reason(cause: object) -> str:
    """Why a connection to one host failed, briefly."""
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, (OperationTimedOut, TimeoutError)):
        return "timed out"
    if isinstance(cause, AuthenticationFailed):
        return (
            "authentication failed: check the URL's user:password or "
            "METAAS_CASSANDRA_USERNAME and METAAS_CASSANDRA_PASSWORD"
        )
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.rpartition("Last error: ")[2]
    return f"{type(cause).__name__}: {cause}"


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


class _RetryPolicy(RetryPolicy):  # type: ignore[misc]
    """Retry an idempotent request once on the next coordinator after a
    timeout, an unavailable replica set or a coordinator error; then report
    the error (the flusher backs off and retries the whole flush)."""

    def _decide(self, query: Any, retry_num: int) -> tuple[int, Any]:
        if retry_num < _RETRIES and getattr(query, "is_idempotent", False):
            return self.RETRY_NEXT_HOST, None
        return self.RETHROW, None

    def on_read_timeout(self, query: Any, *args: Any, retry_num: int = 0, **kw: Any) -> Any:
        return self._decide(query, retry_num)

    def on_write_timeout(self, query: Any, *args: Any, retry_num: int = 0, **kw: Any) -> Any:
        return self._decide(query, retry_num)

    def on_unavailable(self, query: Any, *args: Any, retry_num: int = 0, **kw: Any) -> Any:
        return self._decide(query, retry_num)

    def on_request_error(self, query: Any, *args: Any, retry_num: int = 0, **kw: Any) -> Any:
        return self._decide(query, retry_num)


def _profiles(config: CassandraConfig) -> dict[object, Any]:
    def routing() -> Any:
        # One policy instance per profile: policies keep per-cluster host state.
        return TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=config.local_dc))

    speculative = (
        ConstantSpeculativeExecutionPolicy(config.speculative_delay_ms / 1000, max_attempts=1)
        if config.speculative_delay_ms > 0
        else None
    )
    return {
        EXEC_PROFILE_DEFAULT: ExecutionProfile(
            load_balancing_policy=routing(),
            retry_policy=_RetryPolicy(),
            consistency_level=_level(config.consistency),
            request_timeout=config.write_timeout_ms / 1000,
            row_factory=tuple_factory,
        ),
        _READ_PROFILE: ExecutionProfile(
            load_balancing_policy=routing(),
            retry_policy=_RetryPolicy(),
            consistency_level=_level(config.read_consistency),
            request_timeout=config.read_timeout_ms / 1000,
            row_factory=tuple_factory,
            speculative_execution_policy=speculative,
        ),
    }


def _level(name: str) -> Any:
    return getattr(ConsistencyLevel, name)


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
