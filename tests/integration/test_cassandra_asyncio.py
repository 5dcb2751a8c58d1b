"""The driver from asyncio: paging never blocks the event loop, cancellation
and deadlines are not storage errors, driver errors become domain errors."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from cassandra import OperationTimedOut, ReadTimeout, WriteTimeout
from cassandra import Unavailable as DriverUnavailable
from cassandra.cluster import NoHostAvailable
from cassandra.protocol import OverloadedErrorMessage, SyntaxException
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from metaas.server.model import Partial, SeriesKey
from metaas.server.sketch import Distribution
from metaas.server.storage import (
    Invalid,
    Storage,
    StorageContext,
    StorageError,
    Throttled,
    Unavailable,
    open_storage,
)
from metaas.server.storage.cassandra.session import translated
from metaas.server.telemetry import Telemetry
from tests.backends.cassandra import RETENTION_MS, drop_keyspace, url

KEYSPACE = "metaas_it_paging"
MINUTE = 60_000
HOUR = 60 * MINUTE
SERIES = 50
FETCH_SIZE = 4
NOW = time.time_ns() // 1_000_000
START = NOW - NOW % HOUR - 2 * HOUR  # one whole hour, two hours ago


def _partials() -> list[Partial]:
    rng = np.random.default_rng(5)
    return [
        Partial(
            SeriesKey.of("shop", "latency", {"dyno": f"web.{s}"}),
            START + m * MINUTE,
            "w1",
            1,
            Distribution.from_values(rng.lognormal(2.0, 0.5, 20)),
        )
        for s in range(SERIES)
        for m in range(60)
    ]


async def _write_all() -> None:
    await drop_keyspace(KEYSPACE)
    storage = await open_storage(url(KEYSPACE), StorageContext(RETENTION_MS))
    try:
        await storage.write_partials(_partials())
    finally:
        await storage.close()


@pytest.fixture(scope="module")
def written() -> int:
    """The partials, written once for the module; returns how many."""
    asyncio.run(_write_all())
    return SERIES * 60


async def _open(spans: InMemorySpanExporter | None = None, **options: str | int) -> Storage:
    tracer_provider = TracerProvider()
    if spans is not None:
        tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry = Telemetry(tracer_provider, MeterProvider())
    return await open_storage(
        url(KEYSPACE, schema="none", **options), StorageContext(RETENTION_MS, telemetry=telemetry)
    )


async def test_a_timer_keeps_its_schedule_while_a_many_page_read_runs(written: int) -> None:
    spans = InMemorySpanExporter()
    storage = await _open(spans, fetch_size=FETCH_SIZE)
    stop = asyncio.Event()
    gaps: list[float] = []

    async def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    try:
        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.05)
        began = time.perf_counter()
        read = await storage.read_partials("shop", "latency", START, START + HOUR)
        took = time.perf_counter() - began
        stop.set()
        await ticker
    finally:
        await storage.close()

    assert len(read) == written
    pages = [
        span.attributes["metaas.cassandra.pages"]
        for span in spans.get_finished_spans()
        if span.name == "cassandra SELECT partials" and span.attributes
    ]
    assert sum(pages) >= written // FETCH_SIZE  # type: ignore[operator]
    (call,) = [s for s in spans.get_finished_spans() if s.name == "cassandra read_partials"]
    assert call.attributes is not None
    assert call.attributes["db.system"] == "cassandra"
    assert call.attributes["db.operation"] == "read_partials"
    # A read that blocked the loop would show one gap as long as the read.
    # The bound leaves room for scheduling noise on a busy two-core machine.
    assert took > 0.3, f"read took {took:.3f}s: too short to tell"
    assert max(gaps) < max(0.1, took / 4), f"longest gap {max(gaps):.3f}s in a {took:.3f}s read"
    assert len(gaps) >= took / 0.03


async def test_cancelling_a_read_frees_its_slot_and_is_no_storage_error(written: int) -> None:
    storage = await _open(fetch_size=FETCH_SIZE, max_in_flight=1)
    try:
        read = asyncio.create_task(storage.read_partials("shop", "latency", START, START + HOUR))
        await asyncio.sleep(0.02)
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.005):
                await storage.read_partials("shop", "latency", START, START + HOUR)
        # With one slot, a slot leaked by either would hang this read.
        async with asyncio.timeout(20):
            again = await storage.read_partials("shop", "latency", START, START + HOUR)
        assert len(again) == written
    finally:
        await storage.close()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (DriverUnavailable("x"), Unavailable),
        (ReadTimeout("x"), Unavailable),
        (WriteTimeout("x", write_type=0), Unavailable),
        (OperationTimedOut("x"), Unavailable),
        (NoHostAvailable("x", {}), Unavailable),
        (OverloadedErrorMessage(0x1001, "overloaded", None), Throttled),
        (NoHostAvailable("x", {"h": OverloadedErrorMessage(0x1001, "o", None)}), Throttled),
        (SyntaxException(0x2000, "bad", None), Invalid),
    ],
)
def test_driver_errors_become_domain_errors(error: Exception, expected: type[StorageError]) -> None:
    with pytest.raises(StorageError) as raised, translated:
        raise error
    translated_error = raised.value
    assert type(translated_error) is expected
    assert translated_error.__cause__ is error
    assert translated_error.backend == "cassandra"
    assert translated_error.is_retryable == (expected is not Invalid)


def test_cancellation_is_never_translated() -> None:
    cancelled = asyncio.CancelledError()
    with pytest.raises(asyncio.CancelledError) as raised, translated:
        raise cancelled
    assert raised.value is cancelled
