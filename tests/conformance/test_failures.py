"""Failures every backend reports alike: a stored item that cannot be
decoded is the one Corrupt error, and a read that is cancelled, or whose
deadline passes, is cancellation, never a storage error, and leaves the
backend serving."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from metaas.server.model import Partial, SeriesKey
from metaas.server.sketch import Distribution
from metaas.server.storage import Corrupt, Storage, StorageError
from tests.conformance.conftest import FixedClock
from tests.conformance.damage import DAMAGES, damage_item

MINUTE = 60_000


def partial(minute: int, dyno: str, value: float) -> Partial:
    series = SeriesKey.of("shop", "latency", {"dyno": dyno})
    return Partial(series, minute, "w1", 1, Distribution.from_values(np.array([value])))


@pytest.mark.parametrize("damage", DAMAGES)
async def test_a_corrupt_item_is_the_one_corrupt_error(
    storage: Storage, clock: FixedClock, damage: str
) -> None:
    base = clock.now - 10 * MINUTE
    sound, damaged = partial(base, "web.1", 1.0), partial(base + MINUTE, "web.1", 2.0)
    await storage.write_partials([sound, damaged])
    await damage_item(storage, damaged, damage)

    reads = {
        "read_partials": lambda: storage.read_partials("shop", "latency", base, base + 2 * MINUTE),
        "get_partials": lambda: storage.get_partials([sound.key, damaged.key]),
    }
    for operation, read in reads.items():
        with pytest.raises(Corrupt, match="undecodable") as raised:
            await read()
        error = raised.value
        assert isinstance(error, StorageError), operation
        assert not error.is_retryable, operation
        assert error.backend == storage.name, operation

    # Only what reads the damaged item fails.
    (left,) = await storage.read_partials("shop", "latency", base, base + MINUTE)
    assert left.distribution.sum == 1.0


@pytest.fixture
async def many(storage: Storage, clock: FixedClock) -> tuple[int, int]:
    """Enough partials in one minute that reading them waits on the backend
    (SQLite reads more than 1,000 rows on its reader thread)."""
    minute = clock.now - 5 * MINUTE
    written = [partial(minute, f"web.{i}", float(i)) for i in range(1_200)]
    await storage.write_partials(written)
    return minute, len(written)


@pytest.mark.parametrize("how", ["cancelled", "deadline"])
async def test_a_cancelled_read_is_no_storage_error_and_leaves_the_backend_usable(
    storage: Storage, many: tuple[int, int], how: str
) -> None:
    minute, count = many

    def read() -> asyncio.Future[object]:
        return asyncio.ensure_future(
            storage.read_partials("shop", "latency", minute, minute + MINUTE)
        )

    if how == "cancelled":
        task = read()
        await asyncio.sleep(0)
        assert not task.done()  # it waits on the backend
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        with pytest.raises(TimeoutError):  # the deadline's own error, not a storage error
            async with asyncio.timeout(0):
                await storage.read_partials("shop", "latency", minute, minute + MINUTE)

    async with asyncio.timeout(30):
        again = await storage.read_partials("shop", "latency", minute, minute + MINUTE)
        found = await storage.get_partials([p.key for p in again[:10]])
    assert len(again) == count
    assert len(found) == 10


async def test_an_error_raised_as_the_deadline_passes_is_the_deadline() -> None:
    """What a driver raises while its task is being cancelled (the deadline
    passed meanwhile) is reported as cancellation, not as a storage error."""
    from metaas.server.storage.errors import Translator, Unavailable

    translated = Translator("test", lambda error: Unavailable(str(error)))
    with pytest.raises(Unavailable, match="reset"), translated:
        raise ConnectionResetError("reset")

    async def call() -> None:
        with translated:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                raise ConnectionResetError("reset by the cancelled request") from None

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await call()
