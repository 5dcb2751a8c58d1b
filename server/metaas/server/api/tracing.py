"""A server span per RPC, with the gRPC semantic-convention attributes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from metaas.server.api.errors import RequestError


class RpcSpan:
    """The RPC's span. ``end_after(task)`` keeps it open until ``task`` is
    done, for work that finishes after the answer (a shadow comparison)."""

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self._after: asyncio.Future[object] | None = None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.span.set_attribute(key, value)

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        self.span.set_attributes(attributes)

    def end_after(self, task: asyncio.Future[Any]) -> None:
        self._after = task

    def end(self) -> None:
        if self._after is None or self._after.done():
            self.span.end()
        else:
            self._after.add_done_callback(lambda _done: self.span.end())


@contextmanager
def rpc_span(tracer: trace.Tracer, service: str, method: str) -> Iterator[RpcSpan]:
    """Span ``service/method``; a RequestError or other failure marks it with
    the gRPC status code (never with request values)."""
    with tracer.start_as_current_span(
        f"{service}/{method}",
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        record_exception=False,
        set_status_on_exception=False,
        end_on_exit=False,
    ) as raw:
        span = RpcSpan(raw)
        try:
            yield span
        except RequestError as error:
            span.set_attribute("rpc.grpc.status_code", error.code.value[0])
            span.span.set_status(Status(StatusCode.ERROR, error.code.name))
            raise
        except Exception as error:
            span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.INTERNAL.value[0])
            span.span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise
        else:
            span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.OK.value[0])
        finally:
            span.end()
