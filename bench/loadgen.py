"""The ingest load generator: a separate process that replays pre-serialized
``Write`` requests as raw bytes, so building and serializing messages costs
the sender nothing during the measurement.

    python -m bench.loadgen --target HOST:PORT --requests FILE \
        --concurrency 16 --duration 10 [--warmup 2] [--server-pid PID]

FILE holds the requests, each prefixed by its length (4 bytes, little
endian). Prints one JSON object: acknowledged requests and samples within
the measured window, errors by status code, client latency, and the CPU
time this process and the server (``--server-pid``) used in the window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench._process import cpu_seconds
from metaas.v1 import ingest_pb2

WRITE = "/metaas.v1.MetricsIngest/Write"
_LENGTH = struct.Struct("<I")
_MAX_MESSAGE = 64 * 1024 * 1024


def write_requests(path: Path, requests: list[bytes]) -> None:
    with path.open("wb") as out:
        for request in requests:
            out.write(_LENGTH.pack(len(request)))
            out.write(request)


def read_requests(path: Path) -> list[bytes]:
    data = path.read_bytes()
    requests, offset = [], 0
    while offset < len(data):
        (size,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        requests.append(data[offset : offset + size])
        offset += size
    return requests


class _Window:
    """What completes while the measured window is open."""

    def __init__(self) -> None:
        self.open = False
        self.requests = 0
        self.samples = 0
        self.errors: Counter[str] = Counter()
        self.latencies: list[float] = []


async def _sender(
    call: grpc.aio.UnaryUnaryMultiCallable,
    requests: list[bytes],
    first: int,
    stop_at: float,
    window: _Window,
) -> None:
    index = first
    while time.monotonic() < stop_at:
        request = requests[index % len(requests)]
        index += 1
        started = time.perf_counter()
        try:
            reply = await call(request, timeout=30)
        except grpc.aio.AioRpcError as error:
            if window.open:
                window.errors[error.code().name] += 1
            await asyncio.sleep(0.01)
            continue
        if window.open:
            window.latencies.append(time.perf_counter() - started)
            window.requests += 1
            window.samples += ingest_pb2.WriteResponse.FromString(reply).accepted_samples


async def run(
    target: str,
    requests: list[bytes],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    server_pid: int | None,
) -> dict[str, Any]:
    window = _Window()
    options = [
        ("grpc.max_send_message_length", _MAX_MESSAGE),
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        # No serializers: requests go out as the bytes given, replies come back as bytes.
        call = channel.unary_unary(WRITE)
        stop_at = time.monotonic() + warmup_s + duration_s
        senders = [
            asyncio.create_task(_sender(call, requests, i, stop_at, window))
            for i in range(concurrency)
        ]
        await asyncio.sleep(warmup_s)
        server_cpu = cpu_seconds(server_pid) if server_pid else 0.0
        own_cpu = _own_cpu()
        started = time.monotonic()
        window.open = True
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
        window.open = False
        elapsed = time.monotonic() - started
        server_cpu = cpu_seconds(server_pid) - server_cpu if server_pid else 0.0
        own_cpu = _own_cpu() - own_cpu
        await asyncio.gather(*senders)
    latencies_ms = np.array(window.latencies) * 1000 if window.latencies else np.zeros(1)
    return {
        "requests": window.requests,
        "samples": window.samples,
        "elapsed_s": round(elapsed, 3),
        "samples_per_s": window.samples / elapsed,
        "requests_per_s": window.requests / elapsed,
        "errors": dict(window.errors),
        "concurrency": concurrency,
        "latency_p50_ms": float(np.percentile(latencies_ms, 50)),
        "latency_p99_ms": float(np.percentile(latencies_ms, 99)),
        "loadgen_cpu_cores": own_cpu / elapsed,
        "server_cpu_cores": server_cpu / elapsed if server_pid else None,
    }


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--server-pid", type=int)
    args = parser.parse_args()
    result = asyncio.run(
        run(
            args.target,
            read_requests(args.requests),
            concurrency=args.concurrency,
            duration_s=args.duration,
            warmup_s=args.warmup,
            server_pid=args.server_pid,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
