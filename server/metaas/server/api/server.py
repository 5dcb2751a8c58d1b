"""Builds the grpc.aio server with the metaas services, health and reflection."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from metaas.server.api.admin import SERVICE as ADMIN
from metaas.server.api.admin import MigrationAdminServicer
from metaas.server.api.admission import Admission
from metaas.server.api.ingest import SERVICE as INGEST
from metaas.server.api.ingest import MetricsIngestServicer
from metaas.server.api.intake import IntakeInterceptor
from metaas.server.api.query import SERVICE as QUERY
from metaas.server.api.query import MetricsQueryServicer
from metaas.server.config import SecurityConfig, ServerConfig
from metaas.v1 import ingest_pb2_grpc, migration_pb2_grpc, query_pb2_grpc

SERVICES = (INGEST, QUERY, ADMIN)

# gRPC's own limits, so a client cannot hold resources without using them:
# concurrent streams per connection, connections idle (no RPC) or old beyond
# a bound closed (with a grace for RPCs in flight), and keepalive pings that
# find dead peers. Port reuse is off so that a second server on the same
# address fails to bind instead of sharing its traffic.
# Above the in-flight limit (512 by default), so that admission, with its
# RESOURCE_EXHAUSTED and retry hint, is what refuses a burst: streams past
# this cap are reset by HTTP/2 (REFUSED_STREAM), which a client sees as a
# bare UNAVAILABLE when it opens them before the server's settings arrive.
_MAX_CONCURRENT_STREAMS = 1000
_MAX_CONNECTION_IDLE_MS = 5 * 60_000
_MAX_CONNECTION_AGE_MS = 60 * 60_000
_MAX_CONNECTION_AGE_GRACE_MS = 60_000
_KEEPALIVE_TIME_MS = 60_000
_KEEPALIVE_TIMEOUT_MS = 20_000


class AddressInUse(Exception):
    """Another process listens on the address."""


class Api:
    """The listening server and its health state."""

    def __init__(
        self,
        config: ServerConfig,
        security: SecurityConfig,
        ingest: MetricsIngestServicer,
        query: MetricsQueryServicer,
        admin: MigrationAdminServicer,
        admission: Admission,
    ) -> None:
        self.config = config
        self.health = HealthServicer()
        self.server = grpc.aio.server(
            interceptors=[IntakeInterceptor(admission)],
            options=[
                ("grpc.max_receive_message_length", config.max_receive_message_bytes),
                ("grpc.max_send_message_length", config.max_send_message_bytes),
                ("grpc.so_reuseport", 0),
                ("grpc.max_concurrent_streams", _MAX_CONCURRENT_STREAMS),
                ("grpc.max_connection_idle_ms", _MAX_CONNECTION_IDLE_MS),
                ("grpc.max_connection_age_ms", _MAX_CONNECTION_AGE_MS),
                ("grpc.max_connection_age_grace_ms", _MAX_CONNECTION_AGE_GRACE_MS),
                ("grpc.keepalive_time_ms", _KEEPALIVE_TIME_MS),
                ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
            ],
        )
        ingest_pb2_grpc.add_MetricsIngestServicer_to_server(ingest, self.server)
        query_pb2_grpc.add_MetricsQueryServicer_to_server(query, self.server)
        migration_pb2_grpc.add_MigrationAdminServicer_to_server(admin, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if config.reflection:
            reflection.enable_server_reflection(
                (
                    *SERVICES,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ),
                self.server,
            )
        if security.tls_cert is not None and security.tls_key is not None:
            client_ca = security.tls_client_ca.read_bytes() if security.tls_client_ca else None
            credentials = grpc.ssl_server_credentials(
                [(security.tls_key.read_bytes(), security.tls_cert.read_bytes())],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            self.port = _bind(
                config.listen, lambda: self.server.add_secure_port(config.listen, credentials)
            )
        else:
            self.port = _bind(config.listen, lambda: self.server.add_insecure_port(config.listen))

    async def start(self) -> None:
        await self.server.start()
        await self.set_serving(True)

    async def set_serving(self, serving: bool) -> None:
        """Report every service SERVING, or NOT_SERVING (while a source of
        writes it depends on, a Kafka broker, is lost)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", *SERVICES):
            await self.health.set(service, status)

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, refuse new RPCs, and let in-flight ones finish
        within ``grace_s``."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


def _bind(listen: str, add_port: Callable[[], int]) -> int:
    try:
        return add_port()
    except RuntimeError as error:
        raise AddressInUse(f"cannot listen on {listen}: {listening_holder(listen)}") from error


def listening_holder(listen: str) -> str:
    """Who holds a TCP address, as far as /proc tells: "in use by pid N
    (command)", or why binding may have failed."""
    _host, _, port = listen.rpartition(":")
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rpartition(":")[2], 16) == int(port):  # LISTEN
                inodes.add(f"socket:[{inode}]")
    if not inodes:
        return "the address is not available (no permission, or not an address of this host)"
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        try:
            for fd in (process / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    command = (process / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    return f"in use by pid {process.name} ({command.strip()[:120]})"
        except OSError:
            continue
    return "in use by another process"
