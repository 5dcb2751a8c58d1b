"""Backends under test. Each later backend adds itself to BACKENDS; the whole
suite then runs against it."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from metaas.server.storage import Storage, StorageContext, open_storage

RETENTION_MS = 30 * 86_400_000


class FixedClock:
    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        return self.now


Opener = Callable[[Path, FixedClock], Awaitable[Storage]]


def backend_of(storage: Storage) -> Storage:
    """The backend itself, under what ``open_storage`` wraps it in (the
    retention, the instrumentation)."""
    while (inner := getattr(storage, "inner", None)) is not None:
        storage = inner
    return storage


async def _sqlite(tmp_path: Path, clock: FixedClock) -> Storage:
    return await open_storage(
        f"sqlite:///{tmp_path / 'conformance.db'}", StorageContext(RETENTION_MS, clock=clock)
    )


def _discover() -> dict[str, Opener]:
    """sqlite, plus each ``tests/backends/<name>.py`` exposing
    ``async def open_clean(tmp_path, clock) -> Storage``: an empty store on the
    real service (which ``make test`` starts). Never skipped."""
    found: dict[str, Opener] = {"sqlite": _sqlite}
    for path in sorted((Path(__file__).parents[1] / "backends").glob("[a-z]*.py")):
        module = importlib.import_module(f"tests.backends.{path.stem}")
        if hasattr(module, "open_clean"):  # not a storage backend (the Kafka broker's helpers)
            found[path.stem] = module.open_clean
    return found


BACKENDS: dict[str, Opener] = _discover()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(1_800_000_000_000)


@pytest.fixture(params=sorted(BACKENDS))
async def storage(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FixedClock
) -> AsyncIterator[Storage]:
    opened = await BACKENDS[request.param](tmp_path, clock)
    try:
        yield opened
    finally:
        await opened.close()
