"""Python client for metaas (metaas.v1), async and blocking.

Importable without any server dependency: it needs grpcio, protobuf and
googleapis-common-protos only.
"""

from metaas.client._async import AsyncClient
from metaas.client._calls import DEFAULT_STATS
from metaas.client._channel import DEFAULT_TARGET, SERVICE_CONFIG
from metaas.client._errors import FieldViolation, MetaasError
from metaas.client._sync import Client
from metaas.client._types import QueryResult, ResultSeries, Series, SeriesInfo, SeriesList

__all__ = [
    "DEFAULT_STATS",
    "DEFAULT_TARGET",
    "SERVICE_CONFIG",
    "AsyncClient",
    "Client",
    "FieldViolation",
    "MetaasError",
    "QueryResult",
    "ResultSeries",
    "Series",
    "SeriesInfo",
    "SeriesList",
]
