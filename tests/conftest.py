from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# Figures the reliability tests report at the end of the run.
FIGURES: dict[str, dict[str, object]] = {}


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, object]]:
    found: dict[str, object] = {}
    yield found
    FIGURES[request.node.name] = found


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for test, found in FIGURES.items():
        shown = ", ".join(f"{k}: {v}" for k, v in found.items())
        terminalreporter.write_line(f"{test}: {shown}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Unit tests first: they are fast, and their property tests run before
    any database driver starts background threads (hypothesis objects when
    another thread touches the global random state while it generates)."""
    items.sort(key=lambda item: 0 if "/tests/unit/" in str(item.path) else 1)
