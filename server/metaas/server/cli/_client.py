"""Connection options shared by the client commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from metaas.client import DEFAULT_TARGET, Client

_F = TypeVar("_F", bound=Callable[..., Any])


def client_options(command: _F) -> _F:
    """--target, --token and the TLS files, each with its environment variable."""
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
    for option in reversed(options):
        command = option(command)
    return command


def connect(
    target: str,
    token: str | None,
    tls: bool,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    timeout: float = 10.0,
) -> Client:
    try:
        return Client(
            target,
            timeout=timeout,
            token=token,
            tls=tls,
            root_certificates=tls_ca.read_bytes() if tls_ca else None,
            certificate_chain=tls_cert.read_bytes() if tls_cert else None,
            private_key=tls_key.read_bytes() if tls_key else None,
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from error
