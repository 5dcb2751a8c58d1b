"""Entry point of the ``metaas`` command: the group and its commands."""

from __future__ import annotations

import click

from metaas.server.cli.demo import demo
from metaas.server.cli.migration import migration
from metaas.server.cli.query import query
from metaas.server.cli.series import series
from metaas.server.cli.serve import serve
from metaas.server.cli.storage import rollups, schema, views
from metaas.server.cli.write import write


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="metaas")
def main() -> None:
    """metaas: per-minute metric distributions per app, over gRPC."""


for command in (serve, schema, rollups, views, write, query, series, demo, migration):
    main.add_command(command)

__all__ = ["main"]
