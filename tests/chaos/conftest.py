"""Figures the reliability tests report at the end of the run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

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
