"""Request errors as gRPC statuses with a google.rpc.BadRequest detail."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from metaas.server.storage.errors import StorageError


class RequestError(Exception):
    """A request the server refuses, with the fields at fault."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        violations: Sequence[tuple[str, str]] = (),
        *,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.violations = tuple(violations)
        self.retry_after_s = retry_after_s


def from_storage(error: StorageError) -> RequestError:
    """A backend failure as the caller sees it: UNAVAILABLE when retrying
    later can succeed, INTERNAL otherwise."""
    code = grpc.StatusCode.UNAVAILABLE if error.is_retryable else grpc.StatusCode.INTERNAL
    return RequestError(code, f"storage: {error}")


def invalid(field: str, description: str) -> RequestError:
    return RequestError(
        grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {description}", [(field, description)]
    )


def to_status(error: RequestError) -> grpc.Status:
    """The status, with a BadRequest naming the fields and, for overload, a
    RetryInfo (and gRPC's retry pushback, which clients honour by themselves)."""
    details = []
    if error.violations:
        bad_request = any_pb2.Any()
        bad_request.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in error.violations
                ]
            )
        )
        details.append(bad_request)
    if error.retry_after_s is not None:
        retry = any_pb2.Any()
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(error.retry_after_s * 1000))
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(
            code=getattr(code_pb2, error.code.name), message=error.message, details=details
        )
    )
    if error.retry_after_s is not None:
        pushback = (("grpc-retry-pushback-ms", str(int(error.retry_after_s * 1000))),)
        return _Status(status.code, status.details, (*status.trailing_metadata, *pushback))
    return status


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Any) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: RequestError) -> NoReturn:
    status = to_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover
