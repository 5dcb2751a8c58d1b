"""A hostile tenant against the real server: admin grants, revoked tokens on
open streams, access files of the wrong shape, oversized messages, a second
server on a taken address."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from metaas.client import Client
from metaas.v1 import ingest_pb2, ingest_pb2_grpc
from tests.e2e.test_security import (
    TOKEN_A,
    TOKEN_ADMIN,
    access_file,
    code_of,
    now_ms,
    sample,
)
from tests.support import METAAS, ServerProcess, eventually

TOKEN_SHOP_ADMIN = "tok-shop-admin-9f1e"
MIB = 1024 * 1024


@pytest.fixture
def tenants(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    tokens = access_file(
        tmp_path / "access.json",
        (TOKEN_A, ["app-a"], False),
        (TOKEN_ADMIN, ["*"], True),
        (TOKEN_SHOP_ADMIN, ["shop"], True),
    )
    server = ServerProcess(tmp_path / "server", extra=("--auth-tokens", str(tokens))).start()
    try:
        yield server, tokens
    finally:
        server.stop()


def test_an_admin_token_keeps_to_its_app_grant(tenants: tuple[ServerProcess, Path]) -> None:
    server, _ = tenants
    with Client(server.target, token=TOKEN_SHOP_ADMIN) as shop_admin:
        assert shop_admin.migration_status("shop").app == "shop"
        assert (
            code_of(lambda: shop_admin.migration_status("other"))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        assert (
            code_of(lambda: list(shop_admin.verify_range("other", 0, now_ms(), repair=True)))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        # Without an app, the status holds nothing of other apps (the flag
        # file names them).
        assert shop_admin.migration_status().flags == ""
    with Client(server.target, token=TOKEN_ADMIN) as admin:
        assert admin.migration_status("other").app == "other"


def test_a_revoked_token_ends_its_open_stream(tenants: tuple[ServerProcess, Path]) -> None:
    server, tokens = tenants
    outcome: dict[str, object] = {}

    async def stream() -> None:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = ingest_pb2_grpc.MetricsIngestStub(channel)
            call = stub.WriteStream(metadata=[("authorization", f"Bearer {TOKEN_A}")])
            sent = 0
            for _ in range(5):  # accepted while the token is valid
                await call.write(_message("app-a"))
                sent += 1
            await asyncio.sleep(0.3)
            access_file(tokens, (TOKEN_ADMIN, ["*"], True))  # TOKEN_A revoked
            await asyncio.sleep(1.5)  # the file is re-checked every second
            try:
                for _ in range(20):
                    await call.write(_message("app-a"))
                    sent += 1
                    await asyncio.sleep(0.05)
                await call.done_writing()
                await call
                outcome["code"] = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                outcome["code"] = error.code()
                outcome["details"] = error.details()
            except asyncio.InvalidStateError:  # the call ended while writing
                outcome["code"] = await call.code()
                outcome["details"] = await call.details()
            outcome["sent"] = sent

    asyncio.run(stream())
    assert outcome["code"] == grpc.StatusCode.UNAUTHENTICATED, outcome
    assert "message 5:" in str(outcome["details"])  # the first message after revocation


def _message(app: str, values: int = 1) -> ingest_pb2.WriteRequest:
    now = now_ms()
    return ingest_pb2.WriteRequest(
        series=[
            ingest_pb2.SeriesSamples(
                app=app, metric="latency", times_ms=[now] * values, values=[1.0] * values
            )
        ]
    )


@pytest.mark.parametrize("shape", ['{"tokens": "abc"}', "null", "[1]", '{"tokens": [1]}'])
def test_an_access_file_of_the_wrong_shape_is_rejected_and_logged(
    tenants: tuple[ServerProcess, Path], shape: str
) -> None:
    server, tokens = tenants
    tokens.write_text(shape)
    time.sleep(1.2)
    with Client(server.target, token=TOKEN_A) as client:
        for _ in range(3):  # the last good file stays in force
            assert client.write(sample("app-a")) == 1
            time.sleep(0.5)
    eventually(lambda: _logged(server, "rejected, keeping the last good one"), timeout=5)
    assert "Traceback" not in server.log()


def _logged(server: ServerProcess, text: str) -> None:
    assert text in server.log()


def test_messages_above_the_transport_cap_are_refused_unread(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "server").start()
    try:
        assert server.process is not None
        big = _message("shop", values=3_800_000)  # about 53 MiB
        assert big.ByteSize() > 50 * MIB

        async def burst() -> list[grpc.StatusCode]:
            async with grpc.aio.insecure_channel(
                server.target, options=[("grpc.max_send_message_length", 64 * MIB)]
            ) as channel:
                stub = ingest_pb2_grpc.MetricsIngestStub(channel)
                results = await asyncio.gather(
                    *(stub.Write(big, timeout=60) for _ in range(16)), return_exceptions=True
                )
            return [
                r.code() if isinstance(r, grpc.aio.AioRpcError) else grpc.StatusCode.OK
                for r in results
            ]

        codes = asyncio.run(burst())
        assert set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        peak = _peak_rss_mib(server.process.pid)
        assert peak < 400, f"peak RSS {peak:.0f} MiB"
        with Client(server.target) as client:
            assert client.write(sample("shop")) == 1
    finally:
        server.stop()


def test_request_bytes_are_admitted_before_parsing(tmp_path: Path) -> None:
    """16 concurrent 6 MiB writes against a 16 MiB budget: some are refused
    unparsed, and later writes go through."""
    server = ServerProcess(
        tmp_path / "server", extra=("--max-inflight-bytes", str(16 * MIB))
    ).start()
    try:
        assert server.process is not None
        request = _message("shop", values=450_000)
        assert 6 * MIB < request.ByteSize() < 8 * MIB

        async def burst() -> list[grpc.StatusCode]:
            async with grpc.aio.insecure_channel(server.target) as channel:
                stub = ingest_pb2_grpc.MetricsIngestStub(channel)
                results = await asyncio.gather(
                    *(stub.Write(request, timeout=60) for _ in range(16)), return_exceptions=True
                )
            return [
                r.code() if isinstance(r, grpc.aio.AioRpcError) else grpc.StatusCode.OK
                for r in results
            ]

        codes = asyncio.run(burst())
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        with Client(server.target) as client:
            assert client.write(sample("shop")) == 1
    finally:
        server.stop()


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_second_server_on_the_same_address_fails_naming_it(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path / "first").start()
    try:
        assert first.process is not None
        second = subprocess.run(
            [
                METAAS,
                "serve",
                "--listen",
                first.target,
                "--storage",
                f"sqlite:///{tmp_path / 'second.db'}",
                "--wal-dir",
                str(tmp_path / "second-wal"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert second.returncode == 2  # a setting to change: --listen
        assert first.target in second.stderr
        assert f"pid {first.process.pid}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.stop()
