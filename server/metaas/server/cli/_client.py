"""Connection options shared by the client commands."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from metaas.client import DEFAULT_TARGET, Client


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
