"""Every call of both clients against a scripted in-process server: the
request each builds, the conversion of the answer, deadlines, metadata and
errors. Each test runs once with Client (in a thread) and once with
AsyncClient."""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from metaas.client import AsyncClient, Client, MetaasError, Series
from metaas.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    migration_pb2,
    migration_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)

Context = grpc.aio.ServicerContext  # type: ignore[type-arg]
NAN = float("nan")


async def refuse(context: Context, code: grpc.StatusCode, field: str, description: str) -> None:
    """Abort as the server does: the status with a BadRequest naming ``field``."""
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            ]
        )
    )
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name), message="refused", details=[detail]
    )
    await context.abort_with_status(rpc_status.to_status(status))


class Scripted(
    ingest_pb2_grpc.MetricsIngestServicer,
    query_pb2_grpc.MetricsQueryServicer,
    migration_pb2_grpc.MigrationAdminServicer,
):
    """Answers every RPC from a script; records what it was sent, the
    deadline left and the metadata."""

    def __init__(self) -> None:
        self.requests: list[Message] = []
        self.deadlines: dict[str, float | None] = {}
        self.metadata: dict[str, str] = {}
        self.refuse: tuple[grpc.StatusCode, str, str] | None = None
        self.endless = False
        self.cancelled = asyncio.Event()

    async def _take(self, rpc: str, request: Message, context: Context) -> None:
        self.requests.append(request)
        self.deadlines[rpc] = context.time_remaining()
        self.metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        if self.refuse is not None:
            await refuse(context, *self.refuse)

    async def Write(
        self, request: ingest_pb2.WriteRequest, context: Context
    ) -> ingest_pb2.WriteResponse:
        await self._take("Write", request, context)
        return ingest_pb2.WriteResponse(accepted_samples=sum(len(s.values) for s in request.series))

    async def WriteStream(
        self, request_iterator: AsyncIterator[ingest_pb2.WriteRequest], context: Context
    ) -> ingest_pb2.WriteResponse:
        total = 0
        async for request in request_iterator:
            await self._take("WriteStream", request, context)
            total += sum(len(s.values) for s in request.series)
        return ingest_pb2.WriteResponse(accepted_samples=total)

    async def QueryRange(
        self, request: query_pb2.QueryRangeRequest, context: Context
    ) -> query_pb2.QueryRangeResponse:
        await self._take("QueryRange", request, context)
        if request.end_ms <= request.start_ms:
            await refuse(
                context, grpc.StatusCode.INVALID_ARGUMENT, "end_ms", "must be after start_ms"
            )
        return query_pb2.QueryRangeResponse(
            served_by="scripted",
            series=[
                query_pb2.ResultSeries(
                    labels={"dyno": "web.1"},
                    times_ms=[0, 60_000],
                    stats=[
                        query_pb2.StatValues(stat="count", values=[3.0, 5.0]),
                        query_pb2.StatValues(stat="p99", values=[1.5, NAN]),
                    ],
                )
            ],
        )

    async def ListSeries(
        self, request: query_pb2.ListSeriesRequest, context: Context
    ) -> query_pb2.ListSeriesResponse:
        await self._take("ListSeries", request, context)
        return query_pb2.ListSeriesResponse(
            series=[query_pb2.SeriesDescriptor(metric="m", labels={"dyno": "web.1"})],
            metrics=["m"],
        )

    async def GetMigrationStatus(
        self, request: migration_pb2.GetMigrationStatusRequest, context: Context
    ) -> migration_pb2.GetMigrationStatusResponse:
        await self._take("GetMigrationStatus", request, context)
        return migration_pb2.GetMigrationStatusResponse(migration_enabled=True, app=request.app)

    async def VerifyRange(
        self, request: migration_pb2.VerifyRangeRequest, context: Context
    ) -> AsyncIterator[migration_pb2.VerifyRangeResponse]:
        await self._take("VerifyRange", request, context)
        checked = 0
        try:
            while checked < 3 or self.endless:
                checked += 1
                yield migration_pb2.VerifyRangeResponse(
                    series_total=3, series_checked=checked, done=checked == 3
                )
                await asyncio.sleep(0.01 if self.endless else 0)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@pytest.fixture
async def server() -> AsyncIterator[tuple[Scripted, str]]:
    async with serving() as served:
        yield served


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[Scripted, str]]:
    """A Scripted servicer on a free port, and its address."""
    server = grpc.aio.server()
    servicer = Scripted()
    ingest_pb2_grpc.add_MetricsIngestServicer_to_server(servicer, server)
    query_pb2_grpc.add_MetricsQueryServicer_to_server(servicer, server)
    migration_pb2_grpc.add_MigrationAdminServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


Call = Callable[..., Awaitable[Any]]


@pytest.fixture(params=["Client", "AsyncClient"])
async def call(request: pytest.FixtureRequest, server: tuple[Scripted, str]) -> AsyncIterator[Call]:
    """``await call(method, *args, **kwargs)`` on either client (timeout 30 s,
    token "t"); a stream's messages come back as a list."""
    _, target = server
    if request.param == "AsyncClient":
        async with AsyncClient(target, timeout=30, token="t") as aio:

            async def on_async(name: str, *args: Any, **kwargs: Any) -> Any:
                result = getattr(aio, name)(*args, **kwargs)
                if inspect.isawaitable(result):
                    return await result
                return [item async for item in result]

            yield on_async
        return
    with Client(target, timeout=30, token="t") as blocking:

        def run(name: str, args: Any, kwargs: Any) -> Any:
            result = getattr(blocking, name)(*args, **kwargs)
            return list(result) if isinstance(result, Iterator) else result

        async def on_thread(name: str, *args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(run, name, args, kwargs)

        yield on_thread


SERIES = [Series("shop", "m", [1, 2], [1.0, 2.0], labels={"dyno": "web.1"})]
START = datetime(2026, 1, 1, tzinfo=UTC)
START_MS = 1_767_225_600_000


async def test_write_sends_the_series_under_a_made_up_key(
    call: Call, server: tuple[Scripted, str]
) -> None:
    servicer, _ = server
    assert await call("write", SERIES) == 2
    assert await call("write", SERIES, idempotency_key="mine") == 2
    made_up, given = servicer.requests
    assert isinstance(made_up, ingest_pb2.WriteRequest)
    assert isinstance(given, ingest_pb2.WriteRequest)
    assert len(made_up.idempotency_key) == 32
    assert given.idempotency_key == "mine"
    (series,) = made_up.series
    assert (series.app, series.metric, dict(series.labels)) == ("shop", "m", {"dyno": "web.1"})
    assert (list(series.times_ms), list(series.values)) == ([1, 2], [1.0, 2.0])


async def test_write_stream_sends_each_batch_under_a_key_of_its_own(
    call: Call, server: tuple[Scripted, str]
) -> None:
    servicer, _ = server
    assert await call("write_stream", [SERIES, SERIES * 2]) == 6
    keys = [r.idempotency_key for r in servicer.requests if isinstance(r, ingest_pb2.WriteRequest)]
    assert [len(r.series) for r in servicer.requests if isinstance(r, ingest_pb2.WriteRequest)] == [
        1,
        2,
    ]
    assert len(set(keys)) == 2
    assert all(keys)


async def test_async_write_stream_reads_an_async_iterable(server: tuple[Scripted, str]) -> None:
    _, target = server

    async def batches() -> AsyncIterator[list[Series]]:
        for _ in range(3):
            yield SERIES

    async with AsyncClient(target) as client:
        assert await client.write_stream(batches()) == 6


async def test_query_range_takes_datetimes_and_a_timedelta_step(
    call: Call, server: tuple[Scripted, str]
) -> None:
    servicer, _ = server
    result = await call(
        "query_range",
        "shop",
        "m",
        START + timedelta(milliseconds=1),
        START + timedelta(hours=1),
        step=timedelta(minutes=5),
        stats=["count", "p99"],
        matchers={"status": "2xx"},
        group_by=["dyno"],
    )
    (request,) = servicer.requests
    assert isinstance(request, query_pb2.QueryRangeRequest)
    assert (request.app, request.metric) == ("shop", "m")
    assert (request.start_ms, request.end_ms) == (START_MS + 1, START_MS + 3_600_000)
    assert request.step_ms == 300_000
    assert list(request.stats) == ["count", "p99"]
    assert dict(request.matchers) == {"status": "2xx"}
    assert list(request.group_by) == ["dyno"]
    assert result.served_by == "scripted"
    (series,) = result.series
    assert series.labels == {"dyno": "web.1"}
    assert series.times_ms == (0, 60_000)
    assert list(series.stats) == ["count", "p99"]


async def test_counts_are_ints_and_other_stats_floats(call: Call) -> None:
    result = await call("query_range", "shop", "m", 0, 60_000, stats=["count", "p99"])
    (series,) = result.series
    assert series.stats["count"] == (3, 5)
    assert all(type(v) is int for v in series.stats["count"])
    assert series.stats["p99"][0] == 1.5
    assert all(type(v) is float for v in series.stats["p99"])
    assert math.isnan(series.stats["p99"][1])
    assert [row[1]["count"] for row in series.rows()] == [3, 5]


@pytest.mark.parametrize(
    ("arguments", "step_ms"),
    [
        ({}, 60_000),
        ({"step_ms": 120_000}, 120_000),
        ({"step_ms": timedelta(hours=1)}, 3_600_000),
        ({"step": 180_000}, 180_000),
        ({"step": timedelta(minutes=4)}, 240_000),
    ],
)
async def test_step_is_milliseconds_or_a_timedelta_under_either_name(
    call: Call, server: tuple[Scripted, str], arguments: dict[str, Any], step_ms: int
) -> None:
    servicer, _ = server
    await call("query_range", "shop", "m", 0, 3_600_000, **arguments)
    (request,) = servicer.requests
    assert isinstance(request, query_pb2.QueryRangeRequest)
    assert request.step_ms == step_ms


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"step": 60_000, "step_ms": 60_000}, TypeError, "step or step_ms"),
        ({"step": timedelta(microseconds=1500)}, ValueError, "whole number of milliseconds"),
        ({"start": datetime(2026, 1, 1)}, ValueError, "has no timezone"),
    ],
)
async def test_bad_arguments_are_refused_before_any_call(
    call: Call,
    server: tuple[Scripted, str],
    arguments: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    servicer, _ = server
    range_ = {"start": 0, "end": 60_000} | arguments
    with pytest.raises(error, match=message):
        await call("query_range", "shop", "m", **range_)
    assert servicer.requests == []


async def test_list_series(call: Call, server: tuple[Scripted, str]) -> None:
    servicer, _ = server
    listed = await call("list_series", "shop", START, START_MS + 60_000, metric="m")
    (request,) = servicer.requests
    assert request == query_pb2.ListSeriesRequest(
        app="shop", start_ms=START_MS, end_ms=START_MS + 60_000, metric="m"
    )
    assert listed.metrics == ("m",)
    assert [(s.metric, dict(s.labels)) for s in listed.series] == [("m", {"dyno": "web.1"})]


async def test_migration_status(call: Call, server: tuple[Scripted, str]) -> None:
    servicer, _ = server
    status = await call("migration_status", "shop", include_history=True)
    assert servicer.requests == [
        migration_pb2.GetMigrationStatusRequest(app="shop", include_history=True)
    ]
    assert status.migration_enabled
    assert status.app == "shop"


async def test_verify_range_yields_progress(call: Call, server: tuple[Scripted, str]) -> None:
    servicer, _ = server
    progress = await call("verify_range", "shop", START, START_MS + 1, repair=True, metrics=["m"])
    assert servicer.requests == [
        migration_pb2.VerifyRangeRequest(
            app="shop", start_ms=START_MS, end_ms=START_MS + 1, repair=True, metrics=["m"]
        )
    ]
    assert [(p.series_checked, p.done) for p in progress] == [(1, False), (2, False), (3, True)]


CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("write", (SERIES,)),
    ("write_stream", ([SERIES],)),
    ("query_range", ("shop", "m", 0, 60_000)),
    ("list_series", ("shop", 0, 60_000)),
    ("migration_status", ()),
    ("verify_range", ("shop", 0, 60_000)),
]


@pytest.mark.parametrize(("method", "args"), CALLS, ids=[name for name, _ in CALLS])
async def test_a_refusal_raises_metaas_error_with_the_fields(
    call: Call, server: tuple[Scripted, str], method: str, args: tuple[Any, ...]
) -> None:
    servicer, _ = server
    servicer.refuse = (grpc.StatusCode.INVALID_ARGUMENT, "app", "is required")
    with pytest.raises(MetaasError) as caught:
        await call(method, *args)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.message == "refused"
    assert [(v.field, v.description) for v in caught.value.violations] == [("app", "is required")]


@pytest.mark.parametrize(("method", "args"), CALLS, ids=[name for name, _ in CALLS])
async def test_deadlines_and_the_token_reach_the_server(
    call: Call, server: tuple[Scripted, str], method: str, args: tuple[Any, ...]
) -> None:
    servicer, _ = server
    await call(method, *args)
    await call(method, *args, timeout=5)
    rpc = next(iter(servicer.deadlines))
    given = servicer.deadlines[rpc]
    assert given is not None
    assert 0 < given < 6  # (the server's clock reads the deadline a little late)
    servicer.deadlines.clear()
    await call(method, *args)
    default = servicer.deadlines[rpc]
    if method == "verify_range":
        # A verification takes as long as its data: no deadline unless given.
        assert default is None
    else:
        assert default is not None
        assert 6 < default < 31
    assert servicer.metadata["authorization"] == "Bearer t"


async def test_verify_range_starts_when_iterated_and_stopping_cancels_it(
    server: tuple[Scripted, str],
) -> None:
    servicer, target = server
    servicer.endless = True

    def first_of_two_iterations() -> int:
        with Client(target) as client:
            unstarted = client.verify_range("shop", 0, 60_000)
            del unstarted
            return next(iter(client.verify_range("shop", 0, 60_000))).series_checked

    assert await asyncio.to_thread(first_of_two_iterations) == 1
    await asyncio.wait_for(servicer.cancelled.wait(), 10)
    assert len(servicer.requests) == 1

    servicer.cancelled.clear()
    async with AsyncClient(target) as client:
        progress = client.verify_range("shop", 0, 60_000)
        assert inspect.isasyncgen(progress)
        assert (await anext(progress)).series_checked == 1
        await progress.aclose()
    await asyncio.wait_for(servicer.cancelled.wait(), 10)
    assert len(servicer.requests) == 2
