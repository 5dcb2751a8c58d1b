"""Connection options shared by the client commands, and the server's
refusals told in terms of their flags."""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import click
import grpc

from metaas.client import DEFAULT_TARGET, Client, MetaasError
from metaas.server.cli._errors import ExitStatus, Refused, Unavailable, exit_status_of
from metaas.server.cli._params import format_duration, rfc3339

# The request fields of QueryRange and ListSeries, and the flag setting each.
QUERY_FLAGS: Final = {
    "app": "--app",
    "metric": "--metric",
    "start_ms": "--start",
    "end_ms": "--end",
    "step_ms": "--step",
    "stats": "--stats",
    "matchers": "--match",
    "group_by": "--group-by",
}
_FIELD: Final = re.compile(r"([A-Za-z_]+)(?:\[\"(.*)\"\]|\[\d+\])?")
_MORE: Final = re.compile(r" \(and \d+ more\)$")
_DURATION_MS: Final = re.compile(r"\b(\d+) ms\b")
_EPOCH_MS: Final = re.compile(r"\b\d{12,13}\b")
_UNREACHABLE: Final = "failed to connect"


def client_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--target, --token and the TLS files, each with its environment variable,
    passed to the command as one ``connection: Connection``."""
    options = [
        click.option(
            "--target",
            envvar="METAAS_TARGET",
            default=DEFAULT_TARGET,
            help="Server HOST:PORT. [env METAAS_TARGET]",
        ),
        click.option("--token", envvar="METAAS_TOKEN", help="Bearer token. [env METAAS_TOKEN]"),
        click.option(
            "--tls",
            is_flag=True,
            envvar="METAAS_TLS",
            help="Use TLS with the system's trusted CAs. [env METAAS_TLS]",
        ),
        click.option(
            "--tls-ca",
            envvar="METAAS_TLS_CA",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help="CA to trust (PEM); implies TLS. [env METAAS_TLS_CA]",
        ),
        click.option(
            "--tls-cert",
            envvar="METAAS_CLIENT_TLS_CERT",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help="Client certificate for mutual TLS. [env METAAS_CLIENT_TLS_CERT]",
        ),
        click.option(
            "--tls-key",
            envvar="METAAS_CLIENT_TLS_KEY",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help="Client private key. [env METAAS_CLIENT_TLS_KEY]",
        ),
    ]

    @functools.wraps(command)
    def with_connection(
        *args: Any,
        target: str,
        token: str | None,
        tls: bool,
        tls_ca: Path | None,
        tls_cert: Path | None,
        tls_key: Path | None,
        **kwargs: Any,
    ) -> Any:
        connection = Connection(target, token, tls, tls_ca, tls_cert, tls_key)
        return command(*args, connection=connection, **kwargs)

    decorated: Callable[..., Any] = with_connection
    for option in reversed(options):
        decorated = option(decorated)
    return decorated


@dataclass(frozen=True, slots=True)
class Connection:
    """Where the server is and how to reach it, from the client options."""

    target: str
    token: str | None
    tls: bool
    tls_ca: Path | None
    tls_cert: Path | None
    tls_key: Path | None

    def calls(
        self, flags: Mapping[str, str] = QUERY_FLAGS
    ) -> contextlib.AbstractContextManager[None]:
        """Where the calls of a command run: their failures reported on one
        line, in terms of ``flags`` and of this target."""
        return request_errors(flags, self.target)

    def open(self, timeout: float = 10.0) -> Client:
        try:
            return Client(
                self.target,
                timeout=timeout,
                token=self.token,
                tls=self.tls,
                root_certificates=self.tls_ca.read_bytes() if self.tls_ca else None,
                certificate_chain=self.tls_cert.read_bytes() if self.tls_cert else None,
                private_key=self.tls_key.read_bytes() if self.tls_key else None,
            )
        except ValueError as error:
            raise click.UsageError(str(error)) from error


def in_flags(text: str, flags: Mapping[str, str]) -> str:
    """``text`` with the millisecond fields it names replaced by their
    flags, durations in milliseconds as 5m and epoch milliseconds as RFC
    3339: ``end_ms: 1795788000000 ...`` reads ``--end: 2026-11-27T10:00:00Z ...``."""
    for field, flag in flags.items():
        if field.endswith("_ms"):
            text = re.sub(rf"\b{field}\b", flag, text)
    text = _DURATION_MS.sub(lambda m: format_duration(int(m[1])), text)
    return _EPOCH_MS.sub(lambda m: rfc3339(int(m[0])), text)


def flag_of(field: str, flags: Mapping[str, str]) -> str:
    """The flag that sets a request field: ``stats[1]`` is ``--stats``,
    ``matchers["dyno"]`` is ``--match dyno``; a field no flag sets is itself."""
    match = _FIELD.fullmatch(field)
    if match is None or match[1] not in flags:
        return field
    return f"{flags[match[1]]} {match[2]}" if match[2] else flags[match[1]]


def describe(error: MetaasError, flags: Mapping[str, str], target: str = "") -> str:
    """One line: the status, then each field at fault as the flag that sets
    it and what is wrong, in the flags' terms; for a server that cannot be
    reached, its address (``target``) and where it was set."""
    violations = error.violations
    if not violations:
        message = in_flags(error.message, flags)
        if target and error.code is grpc.StatusCode.UNAVAILABLE and _UNREACHABLE in message:
            message = f"no server at {target} (--target / METAAS_TARGET): {message}"
        return f"{error.code.name}: {message}"
    first = violations[0].field
    if not error.message.startswith(f"{first}: "):
        # One explanation for all its fields (an answer too large).
        named = dict.fromkeys(flag_of(v.field, flags) for v in violations)
        return f"{error.code.name}: {', '.join(named)}: {in_flags(error.message, flags)}"
    parts = [_MORE.sub("", error.message.removeprefix(f"{first}: "))]
    parts += [v.description for v in violations[1:]]
    return f"{error.code.name}: " + "; ".join(
        f"{flag_of(v.field, flags)}: {in_flags(part, flags)}"
        for v, part in zip(violations, parts, strict=True)
    )


@contextlib.contextmanager
def request_errors(flags: Mapping[str, str] = QUERY_FLAGS, target: str = "") -> Iterator[None]:
    """Report a failed call on one line naming the flags at fault. A request
    refused for its fields exits 3 whatever its code (an answer too large is
    RESOURCE_EXHAUSTED, yet only a smaller request helps); otherwise the code
    decides (see _errors)."""
    try:
        yield
    except MetaasError as error:
        status = ExitStatus.REFUSED if error.violations else exit_status_of(error)
        kind = Unavailable if status is ExitStatus.UNAVAILABLE else Refused
        raise kind(describe(error, flags, target)) from error
