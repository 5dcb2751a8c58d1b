"""The driver's cluster as metaas configures it: contact points, TLS and
credentials, an execution profile for writes and one for reads (each with
its consistency, timeout and retry policy), and the first connection, whose
failure is reported on one line naming the hosts and the setting."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any, Final

from cassandra import (
    AuthenticationFailed,
    ConsistencyLevel,
    OperationTimedOut,
    UnresolvableContactPoints,
)
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.policies import (
    ConstantReconnectionPolicy,
    ConstantSpeculativeExecutionPolicy,
    DCAwareRoundRobinPolicy,
    RetryPolicy,
    TokenAwarePolicy,
)
from cassandra.query import tuple_factory

from metaas.server.config import Settings, setting_of
from metaas.server.storage.cassandra.config import CassandraConfig
from metaas.server.storage.errors import Unavailable

try:  # The wheel's compiled libev reactor; the asyncio one works everywhere.
    from cassandra.io.libevreactor import LibevConnection as _Connection
except ImportError:  # pragma: no cover - depends on how the driver was built
    from cassandra.io.asyncioreactor import AsyncioConnection as _Connection

NAME: Final = "cassandra"
READ_PROFILE: Final = "metaas-read"
# Driver-level retries per request; the flusher retries whole flushes with
# backoff on top, so one quick retry on another coordinator is enough here.
_RETRIES: Final = 1
# The URL's setting; the migration target's errors are named by app.py.
_STORAGE: Final = setting_of(Settings, "storage_url").label


def open_cluster(config: CassandraConfig) -> tuple[Any, Any]:
    """The cluster and its connected session (blocking: run on a thread)."""
    with _driver_logs_held():
        try:
            cluster = _cluster_of(config)
            return cluster, cluster.connect()
        except (UnresolvableContactPoints, NoHostAvailable) as error:
            raise _not_reached(config, error) from error


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
        READ_PROFILE: ExecutionProfile(
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
