"""Builds the grpc.aio server with the metaas services, health and reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from metaas.server.api.admin import SERVICE as ADMIN
from metaas.server.api.admin import MigrationAdminServicer
from metaas.server.api.ingest import SERVICE as INGEST
from metaas.server.api.ingest import MetricsIngestServicer
from metaas.server.api.malformed import MalformedRequestInterceptor
from metaas.server.api.query import SERVICE as QUERY
from metaas.server.api.query import MetricsQueryServicer
from metaas.server.config import SecurityConfig, ServerConfig
from metaas.v1 import ingest_pb2_grpc, migration_pb2_grpc, query_pb2_grpc

SERVICES = (INGEST, QUERY, ADMIN)


class Api:
    """The listening server and its health state."""

    def __init__(
        self,
        config: ServerConfig,
        security: SecurityConfig,
        ingest: MetricsIngestServicer,
        query: MetricsQueryServicer,
        admin: MigrationAdminServicer,
    ) -> None:
        self.config = config
        self.health = HealthServicer()
        self.server = grpc.aio.server(
            interceptors=[MalformedRequestInterceptor()],
            options=[
                ("grpc.max_receive_message_length", config.max_receive_message_bytes),
                ("grpc.max_send_message_length", config.max_send_message_bytes),
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
            self.port = self.server.add_secure_port(config.listen, credentials)
        else:
            self.port = self.server.add_insecure_port(config.listen)

    async def start(self) -> None:
        await self.server.start()
        for service in ("", *SERVICES):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, refuse new RPCs, and let in-flight ones finish
        within ``grace_s``."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
