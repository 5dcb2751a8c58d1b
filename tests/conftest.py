from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A running ``metaas serve`` on the embedded store, flushing every 0.2 s."""
    process = ServerProcess(tmp_path / "server").start()
    try:
        yield process
    finally:
        process.stop()
