"""The ``metaas`` command: serve, schema, rollups, views, write, query, series, demo,
migration."""

from metaas.server.cli.main import main

__all__ = ["main"]
