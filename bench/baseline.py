"""The baselines: bare grpc.aio servers of the same services, doing only what
gRPC and protobuf must do, so a scenario's ratio to them is what metaas itself
costs.

    python -m bench.baseline ingest --listen 127.0.0.1:PORT
    python -m bench.baseline query --listen 127.0.0.1:PORT --response FILE

``ingest`` parses each ``Write`` (grpc deserializes the request) and answers
the number of values it holds. ``query`` answers every ``QueryRange`` with one
prebuilt response (the serialized answer of the real server, read from FILE),
which grpc serializes per call as it does for metaas.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import grpc

from metaas.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc

# The same transport limits as metaas (ServerConfig.max_receive_message_bytes).
_MAX_MESSAGE = 64 * 1024 * 1024


class _Ingest(ingest_pb2_grpc.MetricsIngestServicer):
    async def Write(  # noqa: N802 - the RPC's name
        self, request: ingest_pb2.WriteRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.WriteResponse:
        return ingest_pb2.WriteResponse(accepted_samples=sum(len(s.values) for s in request.series))


class _Query(query_pb2_grpc.MetricsQueryServicer):
    def __init__(self, response: query_pb2.QueryRangeResponse) -> None:
        self._response = response

    async def QueryRange(  # noqa: N802 - the RPC's name
        self, request: query_pb2.QueryRangeRequest, context: grpc.aio.ServicerContext
    ) -> query_pb2.QueryRangeResponse:
        return self._response


async def _serve(kind: str, listen: str, answer: query_pb2.QueryRangeResponse | None) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
        ]
    )
    if kind == "ingest":
        ingest_pb2_grpc.add_MetricsIngestServicer_to_server(_Ingest(), server)
    else:
        if answer is None:
            raise SystemExit("query needs --response FILE")
        query_pb2_grpc.add_MetricsQueryServicer_to_server(_Query(answer), server)
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    parser.add_argument("kind", choices=["ingest", "query"])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--response", type=Path)
    args = parser.parse_args()
    answer = (
        query_pb2.QueryRangeResponse.FromString(args.response.read_bytes())
        if args.response is not None
        else None
    )
    asyncio.run(_serve(args.kind, args.listen, answer))


if __name__ == "__main__":
    main()
