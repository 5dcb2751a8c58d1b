"""How commands report a refused setting and a failing backend."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from metaas.server.config import ConfigError
from metaas.server.storage.errors import StorageError


class SettingError(click.ClickException):
    """A setting with a value it does not accept: one line, exit status 2
    (click's status for usage errors)."""

    exit_code = 2


@contextlib.contextmanager
def setting_errors() -> Iterator[None]:
    """Report a setting refused while building or starting as a SettingError."""
    try:
        yield
    except ConfigError as error:
        raise SettingError(str(error)) from error


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    """Report a backend's failure as ``storage: ...`` (exit status 1)."""
    try:
        yield
    except StorageError as error:
        raise click.ClickException(f"storage: {error}") from error
