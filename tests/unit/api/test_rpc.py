"""The one wrapper around every RPC: span, authentication, admission,
deadline, and refusals and storage failures as gRPC statuses. Driven
through a small servicer with a fake servicer context, no gRPC server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from metaas.server.api import auth
from metaas.server.api.admission import Admission
from metaas.server.api.auth import Authenticator
from metaas.server.api.errors import RequestError, invalid
from metaas.server.api.rpc import Call, Rpcs, RpcServicer, server_stream, unary
from metaas.server.config import SecurityConfig
from metaas.server.storage.errors import (
    Corrupt,
    Invalid,
    StorageError,
    Throttled,
    Unavailable,
)
from tests.fakes import Aborted, FakeServicerContext, RecordingMeter
from tests.unit.api.test_auth import sha, write

SERVICE = "metaas.test.v1.Probe"
USER, ADMIN = "user-token", "admin-token"
Work = Callable[[str, Call], Awaitable[str]]


async def echo(request: str, call: Call) -> str:
    return request


class Probe(RpcServicer):
    """One wrapped method per wrapper option; each runs ``self.work``."""

    def __init__(self, rpcs: Rpcs) -> None:
        super().__init__(rpcs)
        self.work: Work = echo
        self.calls: list[Call] = []
        self.streamed: list[str | Exception] = []

    async def _run(self, request: str, call: Call) -> str:
        self.calls.append(call)
        return await self.work(request, call)

    @unary(SERVICE)
    async def Plain(self, request: str, call: Call) -> str:
        return await self._run(request, call)

    @unary(SERVICE, admin=True)
    async def AdminOnly(self, request: str, call: Call) -> str:
        return await self._run(request, call)

    @unary(SERVICE, admit=False)
    async def Unadmitted(self, request: str, call: Call) -> str:
        return await self._run(request, call)

    @unary(SERVICE, deadline=True)
    async def Bounded(self, request: str, call: Call) -> str:
        return await self._run(request, call)

    @server_stream(SERVICE)
    async def Stream(self, request: str, call: Call) -> AsyncIterator[str]:
        """Yields ``streamed`` (raising its exceptions), each after checking
        the caller again, as a stream's next message does."""
        self.calls.append(call)
        for item in self.streamed:
            call.reauthenticate()
            if isinstance(item, Exception):
                raise item
            yield item


class World:
    def __init__(self, access_file: Path, *, limit: int = 8, per_caller: int | None = None):
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.meter = RecordingMeter()
        self.admission = Admission(limit, self.meter, per_caller=per_caller)
        self.rpcs = Rpcs(
            provider.get_tracer("tests"),
            Authenticator(SecurityConfig(auth_tokens=access_file)),
            self.admission,
        )
        self.probe = Probe(self.rpcs)

    def span(self) -> ReadableSpan:
        (span,) = self.exporter.get_finished_spans()
        return span


@pytest.fixture
def access_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(auth, "_RECHECK_S", 0.0)  # re-read on every call
    path = tmp_path / "access.json"
    write(
        path,
        {
            "tokens": [
                {"sha256": sha(USER), "apps": ["shop"]},
                {"sha256": sha(ADMIN), "apps": ["*"], "admin": True},
            ]
        },
    )
    return path


@pytest.fixture
def world(access_file: Path) -> World:
    return World(access_file)


def caller(token: str = USER, time_remaining: float | None = None) -> Any:
    return FakeServicerContext.bearer(token, time_remaining=time_remaining)


async def aborted(call: Awaitable[object]) -> Aborted:
    """How ``call`` was aborted (within a second: a call that waits fails)."""
    with pytest.raises(Aborted) as caught:
        await asyncio.wait_for(call, 1.0)
    return caught.value


def details(error: Aborted) -> list[Any]:
    """The status details the trailing metadata carries, unpacked."""
    packed = error.metadata("grpc-status-details-bin")
    assert isinstance(packed, bytes)
    status = status_pb2.Status.FromString(packed)
    assert status.message == error.details
    unpacked: list[Any] = []
    for detail in status.details:
        for kind in (error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            message = kind()
            if detail.Unpack(message):
                unpacked.append(message)
    return unpacked


class Gate:
    """Work that waits until opened, noting whether it was cancelled."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()
        self.cancelled = False

    async def __call__(self, request: str, call: Call) -> str:
        self.entered.set()
        try:
            await self.opened.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return request


async def test_the_handler_runs_as_its_authenticated_caller(world: World) -> None:
    context = caller()
    assert await world.probe.Plain("ping", context) == "ping"
    (call,) = world.probe.calls
    assert call.context is context
    assert call.principal.name == f"token:{sha(USER)[:8]}"
    assert call.principal.apps == frozenset({"shop"})
    span = world.span()
    assert span.name == f"{SERVICE}/Plain"
    assert span.attributes is not None
    assert span.attributes["enduser.id"] == call.principal.name
    assert span.attributes["rpc.method"] == "Plain"
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]


async def test_a_request_error_becomes_its_status_with_details(world: World) -> None:
    async def refuse(request: str, call: Call) -> str:
        raise invalid("series[0].app", "must not be empty")

    world.probe.work = refuse
    error = await aborted(world.probe.Plain("x", caller()))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details == "series[0].app: must not be empty"
    (bad_request,) = details(error)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("series[0].app", "must not be empty")
    ]
    attributes = world.span().attributes or {}
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (Unavailable("connection refused", backend="cassandra"), grpc.StatusCode.UNAVAILABLE),
        (Throttled("slow down"), grpc.StatusCode.UNAVAILABLE),
        (Invalid("item too large"), grpc.StatusCode.INTERNAL),
        (Corrupt("truncated item"), grpc.StatusCode.INTERNAL),
        (StorageError("something else"), grpc.StatusCode.INTERNAL),
    ],
)
async def test_a_storage_error_is_unavailable_when_retrying_can_succeed(
    access_file: Path, failure: StorageError, code: grpc.StatusCode
) -> None:
    world = World(access_file, limit=1)

    async def fail(request: str, call: Call) -> str:
        raise failure

    world.probe.work = fail
    error = await aborted(world.probe.Plain("x", caller()))
    assert (error.code, error.details) == (code, f"storage: {failure}")
    attributes = world.span().attributes or {}
    assert attributes["rpc.grpc.status_code"] == code.value[0]
    # The slot was given back.
    world.probe.work = echo
    assert await world.probe.Plain("again", caller()) == "again"


async def test_other_exceptions_pass_unchanged(world: World) -> None:
    async def bug(request: str, call: Call) -> str:
        raise ZeroDivisionError

    world.probe.work = bug
    with pytest.raises(ZeroDivisionError):
        await world.probe.Plain("x", caller())
    attributes = world.span().attributes or {}
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]


async def test_an_unknown_caller_never_reaches_the_handler(world: World) -> None:
    for context in (FakeServicerContext().typed(), caller("stolen")):
        error = await aborted(world.probe.Plain("x", context))
        assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert world.probe.calls == []


async def test_admin_methods_refuse_a_non_admin(world: World) -> None:
    error = await aborted(world.probe.AdminOnly("x", caller(USER)))
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert world.probe.calls == []
    assert await world.probe.AdminOnly("x", caller(ADMIN)) == "x"
    assert [c.principal.admin for c in world.probe.calls] == [True]


async def test_admission_is_held_by_the_handler_and_released(access_file: Path) -> None:
    world = World(access_file, limit=1)
    gate = Gate()
    world.probe.work = gate
    first = asyncio.ensure_future(world.probe.Plain("first", caller()))
    await gate.entered.wait()
    error = await aborted(world.probe.Plain("second", caller(ADMIN)))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    (retry,) = details(error)
    assert retry.retry_delay.ToMilliseconds() > 0
    assert error.metadata("grpc-retry-pushback-ms") == str(retry.retry_delay.ToMilliseconds())
    assert world.meter.adds("metaas.rpc.rejected") == [
        (1, {"rpc.method": "Plain", "metaas.limit": "server"})
    ]
    gate.opened.set()
    assert await first == "first"
    world.probe.work = echo
    assert await world.probe.Plain("third", caller(ADMIN)) == "third"


async def test_admission_is_released_after_a_refusal(access_file: Path) -> None:
    world = World(access_file, limit=1)

    async def refuse(request: str, call: Call) -> str:
        raise RequestError(grpc.StatusCode.NOT_FOUND, "no such app")

    world.probe.work = refuse
    for _ in range(3):
        assert (await aborted(world.probe.Plain("x", caller()))).code == grpc.StatusCode.NOT_FOUND


async def test_admission_is_counted_per_caller(access_file: Path) -> None:
    world = World(access_file, limit=2, per_caller=1)
    gate = Gate()
    world.probe.work = gate
    held = asyncio.ensure_future(world.probe.Plain("held", caller(USER)))
    await gate.entered.wait()
    error = await aborted(world.probe.Plain("more", caller(USER)))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "this caller" in error.details
    other = asyncio.ensure_future(world.probe.Plain("other", caller(ADMIN)))
    gate.opened.set()
    assert list(await asyncio.gather(held, other)) == ["held", "other"]


async def test_an_unadmitted_method_runs_when_the_server_is_full(access_file: Path) -> None:
    world = World(access_file, limit=1)
    gate = Gate()
    world.probe.work = gate
    held = asyncio.ensure_future(world.probe.Plain("held", caller()))
    await gate.entered.wait()
    world.probe.work = echo
    assert await world.probe.Unadmitted("health", caller()) == "health"
    gate.opened.set()
    await held


async def test_the_deadline_cancels_the_work(access_file: Path) -> None:
    world = World(access_file, limit=1)
    gate = Gate()
    world.probe.work = gate
    started = time.perf_counter()
    error = await aborted(world.probe.Bounded("x", caller(time_remaining=0.05)))
    assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.perf_counter() - started < 1.0
    assert gate.cancelled
    attributes = world.exporter.get_finished_spans()[0].attributes or {}
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    world.probe.work = echo
    assert await world.probe.Bounded("after", caller(time_remaining=1.0)) == "after"


async def test_without_a_deadline_the_work_is_not_cut_off(world: World) -> None:
    async def slow(request: str, call: Call) -> str:
        await asyncio.sleep(0.05)
        return request

    world.probe.work = slow
    assert await world.probe.Bounded("x", caller(time_remaining=None)) == "x"


async def collect(stream: AsyncIterator[str]) -> tuple[list[str], Aborted | None]:
    received: list[str] = []
    try:
        async for item in stream:
            received.append(item)
    except Aborted as error:
        return received, error
    return received, None


async def test_a_stream_yields_its_responses(world: World) -> None:
    world.probe.streamed = ["a", "b", "c"]
    assert await collect(world.probe.Stream("x", caller())) == (["a", "b", "c"], None)
    attributes = world.span().attributes or {}
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (invalid("series[1].app", "must not be empty"), grpc.StatusCode.INVALID_ARGUMENT),
        (Unavailable("gone"), grpc.StatusCode.UNAVAILABLE),
        (Corrupt("truncated"), grpc.StatusCode.INTERNAL),
    ],
)
async def test_a_stream_failing_midway_ends_with_its_status(
    world: World, failure: Exception, code: grpc.StatusCode
) -> None:
    world.probe.streamed = ["a", failure, "never"]
    received, error = await collect(world.probe.Stream("x", caller()))
    assert received == ["a"]
    assert error is not None
    assert error.code == code


async def test_a_stream_holds_admission_until_the_caller_stops_reading(
    access_file: Path,
) -> None:
    world = World(access_file, limit=1)
    world.probe.streamed = ["a", "b"]
    stream = world.probe.Stream("x", caller())
    assert await anext(stream) == "a"
    error = await aborted(world.probe.Plain("x", caller(ADMIN)))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    await stream.aclose()  # type: ignore[attr-defined]
    assert await world.probe.Plain("x", caller(ADMIN)) == "x"


async def test_a_token_revoked_during_a_stream_is_refused_at_its_next_message(
    world: World, access_file: Path
) -> None:
    world.probe.streamed = ["a", "b"]
    stream = world.probe.Stream("x", caller(USER))
    assert await anext(stream) == "a"
    write(access_file, {"tokens": [{"sha256": sha(ADMIN), "apps": ["*"], "admin": True}]})
    received, error = await collect(stream)
    assert received == []
    assert error is not None
    assert error.code == grpc.StatusCode.UNAUTHENTICATED


def test_the_fake_context_aborts_as_grpc_does() -> None:
    """The fake's abort raises, so a handler never continues past it."""

    async def run() -> None:
        await FakeServicerContext().abort(grpc.StatusCode.NOT_FOUND, "gone", (("k", "v"),))

    with pytest.raises(Aborted) as caught:
        asyncio.run(run())
    assert (caught.value.code, caught.value.details, caught.value.metadata("k")) == (
        grpc.StatusCode.NOT_FOUND,
        "gone",
        "v",
    )
