"""Request errors as gRPC statuses with a google.rpc.BadRequest detail."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


class RequestError(Exception):
    """A request the server refuses, with the fields at fault."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        violations: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.violations = tuple(violations)


def invalid(field: str, description: str) -> RequestError:
    return RequestError(
        grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {description}", [(field, description)]
    )


def to_status(error: RequestError) -> grpc.Status:
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in error.violations
            ]
        )
    )
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(
            code=getattr(code_pb2, error.code.name),
            message=error.message,
            details=[detail] if error.violations else [],
        )
    )
    return status


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: RequestError) -> NoReturn:
    status = to_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover
