"""Helpers shared by the tests: a real server process and polling."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
METAAS = str(Path(sys.executable).with_name("metaas"))
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def eventually(check: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.1) -> T:
    """Call ``check`` until it returns without AssertionError; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(interval)


class ServerProcess:
    """``metaas serve`` as a child process, on a free port, with its own data."""

    def __init__(
        self,
        data_dir: Path,
        *,
        flush_interval_s: float = 0.2,
        storage: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.credentials = credentials  # for the health check of a TLS server
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.args = [
            METAAS,
            "serve",
            "--listen",
            self.target,
            "--storage",
            storage or f"sqlite:///{data_dir / 'metaas.db'}",
            "--wal-dir",
            str(data_dir / "wal"),
            "--flush-interval-s",
            str(flush_interval_s),
            *extra,
        ]
        self.env = {**os.environ, "OTEL_SDK_DISABLED": "true", **(env or {})}
        self.log_path = data_dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        self.wait_serving()
        return self

    def wait_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        channel = (
            grpc.secure_channel(self.target, self.credentials)
            if self.credentials is not None
            else grpc.insecure_channel(self.target)
        )
        with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited early:\n{self.log()}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server not serving after {timeout}s:\n{self.log()}")
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no drain, no flush."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
