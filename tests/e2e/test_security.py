"""TLS, mutual TLS, bearer tokens and tenant isolation, through the real server."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from metaas.client import Client, MetaasError, Series
from tests.certs import Authority
from tests.support import METAAS, ServerProcess, eventually, free_port

MINUTE = 60_000
TOKEN_A = "tok-a-7c1f0e9d2b"
TOKEN_ADMIN = "tok-admin-55aa19"
TOKEN_C = "tok-c-0b9e77"
SECRET_VALUE = 987654.321


def access_file(
    path: Path,
    *tokens: tuple[str, list[str], bool],
    identities: list[dict[str, object]] | None = None,
) -> Path:
    path.write_text(
        json.dumps(
            {
                "tokens": [
                    {"sha256": hashlib.sha256(t.encode()).hexdigest(), "apps": apps, "admin": admin}
                    for t, apps, admin in tokens
                ],
                "identities": identities or [],
            }
        )
    )
    return path


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def sample(app: str) -> list[Series]:
    return [Series(app, "latency", [now_ms()], [SECRET_VALUE], {"dyno": "web.1"})]


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(MetaasError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    tokens = access_file(
        tmp_path / "access.json", (TOKEN_A, ["app-a"], False), (TOKEN_ADMIN, ["*"], True)
    )
    server = ServerProcess(
        tmp_path / "server",
        extra=("--auth-tokens", str(tokens), "--log-level", "debug"),
        env={
            "OTEL_SDK_DISABLED": "false",
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_METRICS_EXPORTER": "none",
        },
    ).start()
    try:
        yield server, tokens
    finally:
        server.stop()


def test_tokens_isolate_tenants(token_server: tuple[ServerProcess, Path]) -> None:
    server, _ = token_server
    start, end = now_ms() - 10 * MINUTE, now_ms() + MINUTE
    with Client(server.target, token=TOKEN_ADMIN) as admin:
        assert admin.write(sample("app-b")) == 1
    with Client(server.target, token=TOKEN_A) as client:
        assert client.write(sample("app-a")) == 1
        with pytest.raises(MetaasError) as caught:
            client.write(sample("app-a") + sample("app-b"))
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert [v.field for v in caught.value.violations] == ["series[1].app"]
        assert code_of(lambda: client.query_range("app-b", "latency", start, end)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert code_of(lambda: client.list_series("app-b", start, end)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )

        def own_series_listed() -> None:
            listed = client.list_series("app-a", start, end)
            assert [s.metric for s in listed.series] == ["latency"]

        eventually(own_series_listed)
        assert client.query_range("app-a", "latency", start, end).series


def test_migration_admin_is_for_admins_only(token_server: tuple[ServerProcess, Path]) -> None:
    server, _ = token_server
    with Client(server.target, token=TOKEN_A) as client:
        assert code_of(client.migration_status) == grpc.StatusCode.PERMISSION_DENIED
        assert (
            code_of(lambda: list(client.verify_range("app-a", 0, now_ms())))
            == grpc.StatusCode.PERMISSION_DENIED
        )
    with Client(server.target) as anonymous:
        assert code_of(anonymous.migration_status) == grpc.StatusCode.UNAUTHENTICATED
    with Client(server.target, token=TOKEN_ADMIN) as admin:
        assert admin.migration_status().migration_enabled is False


def test_missing_or_bad_tokens_are_unauthenticated(
    token_server: tuple[ServerProcess, Path],
) -> None:
    server, _ = token_server
    start, end = now_ms() - MINUTE, now_ms()
    for client in (
        Client(server.target),
        Client(server.target, token="not-a-token"),
        Client(server.target, metadata=[("authorization", f"Basic {TOKEN_A}")]),
    ):
        with client:
            assert (
                code_of(lambda c=client: c.write(sample("app-a")))
                == grpc.StatusCode.UNAUTHENTICATED
            )
            assert code_of(lambda c=client: c.query_range("app-a", "latency", start, end)) == (
                grpc.StatusCode.UNAUTHENTICATED
            )
            assert code_of(lambda c=client: c.list_series("app-a", start, end)) == (
                grpc.StatusCode.UNAUTHENTICATED
            )
    with grpc.insecure_channel(server.target) as channel:  # health stays open
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_access_file_reloads_and_a_broken_one_changes_nothing(
    token_server: tuple[ServerProcess, Path],
) -> None:
    server, tokens = token_server
    access_file(tokens, (TOKEN_A, ["app-a"], False), (TOKEN_C, ["app-c"], False))
    with Client(server.target, token=TOKEN_C) as client:
        eventually(lambda: _writes(client, "app-c"), timeout=10)
    tokens.write_text('{"tokens": [ {"sha256": ')  # broken mid-edit
    time.sleep(1.5)
    with Client(server.target, token=TOKEN_C) as client:
        assert client.write(sample("app-c")) == 1
    assert "rejected, keeping the last good one" in server.log()


def _writes(client: Client, app: str) -> None:
    try:
        client.write(sample(app))
    except MetaasError as error:
        raise AssertionError(error) from error


def test_no_token_or_value_in_logs_or_spans(token_server: tuple[ServerProcess, Path]) -> None:
    server, _ = token_server
    with Client(server.target, token=TOKEN_A) as client:
        client.write(sample("app-a"))
        client.query_range("app-a", "latency", now_ms() - MINUTE, now_ms() + MINUTE)
        with pytest.raises(MetaasError):
            client.write(sample("app-b"))
    with Client(server.target, token="tok-wrong-31337") as client, pytest.raises(MetaasError):
        client.write(sample("app-a"))
    server.terminate()
    log = server.log()
    assert '"name": "metaas.v1.MetricsIngest/Write"' in log  # spans were exported here
    for secret in (TOKEN_A, "tok-wrong-31337", str(SECRET_VALUE), "987654"):
        assert secret not in log


def test_tls_refuses_plaintext(tmp_path: Path) -> None:
    ca = Authority(tmp_path / "pki", "test-ca")
    server_cert = ca.issue("metaas-server", server=True)
    server = ServerProcess(
        tmp_path / "server",
        credentials=grpc.ssl_channel_credentials(ca.cert.read_bytes()),
        extra=("--tls-cert", str(server_cert.cert), "--tls-key", str(server_cert.key)),
    ).start()
    try:
        with Client(server.target, timeout=3) as plain:
            assert code_of(lambda: plain.write(sample("a"))) == grpc.StatusCode.UNAVAILABLE
        with Client(server.target, root_certificates=ca.cert.read_bytes()) as secure:
            assert secure.write(sample("a")) == 1
    finally:
        server.stop()


def test_mutual_tls_requires_a_trusted_client_certificate(tmp_path: Path) -> None:
    ca = Authority(tmp_path / "pki", "test-ca")
    stranger_ca = Authority(tmp_path / "other", "stranger-ca")
    server_cert = ca.issue("metaas-server", server=True)
    router = ca.issue("router-7")
    stranger = stranger_ca.issue("router-7")
    tokens = access_file(
        tmp_path / "access.json",
        identities=[{"name": "router-7", "apps": ["app-a"], "admin": False}],
    )
    server = ServerProcess(
        tmp_path / "server",
        extra=(
            "--tls-cert",
            str(server_cert.cert),
            "--tls-key",
            str(server_cert.key),
            "--tls-client-ca",
            str(ca.cert),
            "--auth-tokens",
            str(tokens),
        ),
    )
    server.wait_serving = lambda timeout=30.0: time.sleep(2)  # type: ignore[method-assign]
    server.start()
    root = ca.cert.read_bytes()
    try:
        with Client(server.target, root_certificates=root, timeout=3) as anonymous:
            assert code_of(lambda: anonymous.write(sample("app-a"))) == grpc.StatusCode.UNAVAILABLE
        with Client(
            server.target,
            root_certificates=root,
            timeout=3,
            certificate_chain=stranger.cert.read_bytes(),
            private_key=stranger.key.read_bytes(),
        ) as untrusted:
            assert code_of(lambda: untrusted.write(sample("app-a"))) == grpc.StatusCode.UNAVAILABLE
        with Client(
            server.target,
            root_certificates=root,
            certificate_chain=router.cert.read_bytes(),
            private_key=router.key.read_bytes(),
        ) as trusted:
            assert trusted.write(sample("app-a")) == 1
            assert (
                code_of(lambda: trusted.write(sample("app-b"))) == grpc.StatusCode.PERMISSION_DENIED
            )
    finally:
        server.stop()


def test_network_listen_without_auth_needs_insecure(tmp_path: Path) -> None:
    listen = f"0.0.0.0:{free_port()}"
    refused = subprocess.run(
        [
            METAAS,
            "serve",
            "--listen",
            listen,
            "--wal-dir",
            str(tmp_path / "w"),
            "--storage",
            f"sqlite:///{tmp_path / 'db'}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode == 2
    assert "--insecure" in refused.stderr
    server = ServerProcess(tmp_path / "server", extra=("--insecure",))
    server.args[server.args.index("--listen") + 1] = f"0.0.0.0:{server.port}"
    server.start()
    try:
        assert "WITHOUT authentication" in server.log()
    finally:
        server.stop()
