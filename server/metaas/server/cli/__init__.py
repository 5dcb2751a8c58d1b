"""The ``metaas`` command: serve, write, query, demo."""

from metaas.server.cli.main import main

__all__ = ["main"]
