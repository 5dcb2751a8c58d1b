"""``metaas serve``: its options are the declared settings (metaas.server.config)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import click

from metaas.server.cli._errors import SettingError, setting_errors, storage_errors
from metaas.server.cli._options import SettingsCommand, setting_options
from metaas.server.config import LOG_LEVEL, Settings, declared


@click.command(cls=SettingsCommand)
@setting_options(*declared(Settings), LOG_LEVEL)
def serve(**values: Any) -> None:
    """Run the server until SIGTERM or Ctrl-C (then drain and flush).

    Every option may be given by its environment variable instead; the flag
    wins.
    """
    from metaas.server.cli._flag_file import check_flag_file
    from metaas.server.telemetry import from_environment

    logging.basicConfig(
        level=values[LOG_LEVEL.name].upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    with setting_errors():
        settings = Settings.from_values(values)
        check_flag_file(settings.migration)
        telemetry = from_environment()
    from metaas.server.api.server import AddressInUse
    from metaas.server.app import serve as run
    from metaas.server.ingest import WalLocked

    with setting_errors(), storage_errors():
        try:
            asyncio.run(run(settings, telemetry))
        except (AddressInUse, WalLocked) as error:
            # Another server holds the address or the log directory: choose
            # another --listen or --wal-dir, or stop that one.
            raise SettingError(str(error)) from error
