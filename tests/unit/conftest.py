"""Fixtures of the in-process ingest tests: a fixed clock and an embedded
store in the test's directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from metaas.server.storage import Storage, StorageContext, open_storage
from tests.conformance.conftest import RETENTION_MS, FixedClock

START = 1_800_000_000_000


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(START)


@pytest.fixture
async def storage(tmp_path: Path, clock: FixedClock) -> AsyncIterator[Storage]:
    opened = await open_storage(
        f"sqlite:///{tmp_path / 'db.sqlite'}", StorageContext(RETENTION_MS, clock=clock)
    )
    yield opened
    await opened.close()
