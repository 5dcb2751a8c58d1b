"""The gRPC surface: one servicer per service, the wrapper every RPC runs in
(``rpc``), request validation, and the server itself (health, reflection,
TLS, the intake that admits request bytes before they are parsed)."""

from metaas.server.api.admin import MigrationAdminServicer
from metaas.server.api.admission import Admission
from metaas.server.api.auth import Authenticator, Principal
from metaas.server.api.errors import RequestError
from metaas.server.api.ingest import MetricsIngestServicer
from metaas.server.api.query import MetricsQueryServicer
from metaas.server.api.rpc import Call, Rpcs
from metaas.server.api.server import AddressInUse, Api

__all__ = [
    "AddressInUse",
    "Admission",
    "Api",
    "Authenticator",
    "Call",
    "MetricsIngestServicer",
    "MetricsQueryServicer",
    "MigrationAdminServicer",
    "Principal",
    "RequestError",
    "Rpcs",
]
