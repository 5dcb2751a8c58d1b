"""A server span per RPC, with the gRPC semantic-convention attributes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from metaas.server.api.errors import RequestError


@contextmanager
def rpc_span(tracer: trace.Tracer, service: str, method: str) -> Iterator[trace.Span]:
    """Span ``service/method``; a RequestError or other failure marks it with
    the gRPC status code (never with request values)."""
    with tracer.start_as_current_span(
        f"{service}/{method}",
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except RequestError as error:
            span.set_attribute("rpc.grpc.status_code", error.code.value[0])
            span.set_status(Status(StatusCode.ERROR, error.code.name))
            raise
        except Exception as error:
            span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.INTERNAL.value[0])
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise
        else:
            span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.OK.value[0])
