"""How commands report what went wrong: one line on stderr, no traceback,
and an exit status that says whose problem it is (documented in the
README's CLI section):

====  =======================================================================
0     done (an empty answer too: a hint on stderr says why it may be empty)
1     the command ran and found a problem (``migration verify``: the backends
      differ)
2     usage: a flag, value, file or setting the command does not accept, or
      an address or log directory another ``metaas serve`` holds
3     the server refused the request: a field it does not accept, a token or
      grant it does not know, or a precondition (no migration configured)
4     the server or a backend could not be reached or failed: retry later
====  =======================================================================
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator

import click
import grpc

from metaas.client import MetaasError
from metaas.server.config import ConfigError
from metaas.server.storage.errors import StorageError


class ExitStatus(enum.IntEnum):
    OK = 0
    FOUND = 1
    USAGE = 2
    REFUSED = 3
    UNAVAILABLE = 4


# Statuses that retrying later can change: the server's or a backend's state.
_UNAVAILABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)


class Found(click.ClickException):
    """The command ran and found a problem."""

    exit_code = int(ExitStatus.FOUND)


class Refused(click.ClickException):
    """The server refused the request."""

    exit_code = int(ExitStatus.REFUSED)


class Unavailable(click.ClickException):
    """The server or a backend could not be reached or failed."""

    exit_code = int(ExitStatus.UNAVAILABLE)


def exit_status_of(error: MetaasError) -> ExitStatus:
    """REFUSED for what the caller must change, UNAVAILABLE for what may pass."""
    return ExitStatus.UNAVAILABLE if error.code in _UNAVAILABLE else ExitStatus.REFUSED


@contextlib.contextmanager
def server_errors() -> Iterator[None]:
    """Report a failed call as ``CODE: message`` with its exit status."""
    try:
        yield
    except MetaasError as error:
        kind = Unavailable if exit_status_of(error) is ExitStatus.UNAVAILABLE else Refused
        raise kind(f"{error.code.name}: {error.message}") from error


class SettingError(click.ClickException):
    """A setting with a value it does not accept: one line, exit status 2
    (click's status for usage errors)."""

    exit_code = int(ExitStatus.USAGE)


@contextlib.contextmanager
def setting_errors() -> Iterator[None]:
    """Report a setting refused while building or starting as a SettingError."""
    try:
        yield
    except ConfigError as error:
        raise SettingError(str(error)) from error


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    """Report a backend's failure as ``storage: ...`` (exit status 4)."""
    try:
        yield
    except StorageError as error:
        raise Unavailable(f"storage: {error}") from error
