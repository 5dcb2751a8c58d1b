"""Child processes the benchmark starts: metaas servers and baselines.

Every child is started from this process, so all of them share its process
group and are stopped here (SIGTERM, then SIGKILL) when a scenario ends.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def serve_accepts(flag: str) -> bool:
    """Whether this tree's ``metaas serve`` has ``flag`` (an A/B run may
    run a tree older than the scenario)."""
    run = subprocess.run(
        [str(BIN / "metaas"), "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return re.search(re.escape(flag) + r"(?![-\w])", run.stdout) is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of proc(5) (utime, stime); index 0 here is field 3.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def memory_mib(pid: int) -> dict[str, float]:
    """Resident set size now (VmRSS) and at its peak (VmHWM), in MiB."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) / 1024
    return {"rss_mib": found["VmRSS"], "peak_rss_mib": found["VmHWM"]}


class Child:
    """A gRPC server as a child process on a free loopback port."""

    def __init__(
        self,
        name: str,
        args: list[str],
        *,
        port: int,
        log_path: Path,
        env: dict[str, str] | None = None,
        health: bool = True,
    ) -> None:
        self.name = name
        self.args = args
        self.port = port
        self.target = f"127.0.0.1:{port}"
        self.log_path = log_path
        self.env = {**os.environ, "OTEL_SDK_DISABLED": "true", **(env or {})}
        self.health = health
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = 120.0) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT
            )
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready in {timeout_s}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        """SERVING on health (metaas), or accepting connections (baselines)."""
        if not self.health:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False
        with grpc.insecure_channel(self.target) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def memory_mib(self) -> dict[str, float]:
        return memory_mib(self.pid)

    def stop(self, timeout_s: float = 90.0) -> None:
        """SIGTERM (a metaas server drains and flushes), SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Child:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def metaas_server(
    name: str,
    storage: str,
    work: Path,
    *,
    flush_interval_s: float,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Child:
    """``metaas serve`` with its own write-ahead log directory under ``work``."""
    port = free_port()
    directory = work / name
    directory.mkdir(parents=True, exist_ok=True)
    args = [
        str(BIN / "metaas"),
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--storage",
        storage,
        "--wal-dir",
        str(directory / "wal"),
        "--flush-interval-s",
        str(flush_interval_s),
        "--log-level",
        "warning",
        *extra,
    ]
    return Child(name, args, port=port, log_path=directory / "server.log", env=env)


def baseline_server(kind: str, work: Path, *, response: Path | None = None) -> Child:
    """A bare grpc.aio server of the same service (``bench.baseline``)."""
    port = free_port()
    args = [sys.executable, "-m", "bench.baseline", kind, "--listen", f"127.0.0.1:{port}"]
    if response is not None:
        args += ["--response", str(response)]
    return Child(
        f"baseline-{kind}",
        args,
        port=port,
        log_path=work / f"baseline-{kind}.log",
        health=False,
    )
