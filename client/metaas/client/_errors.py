"""Errors raised by the client, with the server's field violations."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """A request field at fault, named as in the request message (for
    example ``series[0].times_ms[3]`` or ``step_ms``), and what is wrong."""

    field: str
    description: str


class MetaasError(Exception):
    """An RPC failed or was refused.

    ``code`` is the gRPC status, ``message`` the server's explanation, and
    ``violations`` name the request fields at fault (for INVALID_ARGUMENT,
    for RESOURCE_EXHAUSTED on a request or answer too large, and for
    PERMISSION_DENIED on an app).

    Each method documents its own codes. Any call may also raise
    UNAUTHENTICATED (the server requires a token, and got none or one it
    does not know); PERMISSION_DENIED (the caller may not do this);
    RESOURCE_EXHAUSTED (the server is at its limit of requests in flight:
    retry later); UNAVAILABLE (the server could not be reached within
    gRPC's retries, or cannot store or read now: retry later);
    DEADLINE_EXCEEDED (the call's ``timeout`` passed); INTERNAL (a storage
    failure that retrying will not fix).
    """

    def __init__(
        self, code: grpc.StatusCode, message: str, violations: tuple[FieldViolation, ...] = ()
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.violations = violations

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> MetaasError:
        code: grpc.StatusCode = error.code()
        message: str = error.details() or ""
        metadata = error.trailing_metadata() or ()
        return cls(code, message, _violations(metadata))


def _violations(metadata: Iterable[Any]) -> tuple[FieldViolation, ...]:
    # Sync calls give (key, value) namedtuples, asyncio calls grpc.aio.Metadata.
    found: list[FieldViolation] = []
    for key, value in metadata:
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            bad_request = error_details_pb2.BadRequest()
            if detail.Unpack(bad_request):
                found.extend(
                    FieldViolation(v.field, v.description) for v in bad_request.field_violations
                )
    return tuple(found)
