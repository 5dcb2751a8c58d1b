"""Exit 0 when a Kafka broker at HOST:PORT answers a metadata request, 1 otherwise.

Speaks just enough of the Kafka protocol (one Metadata request, version 4, the
oldest Kafka 4 still serves) to prove the broker serves clients: it answers
only once it has joined the cluster, and lists only brokers that are not
fenced. Standard library only, so it works before any virtualenv exists.
Prints the cluster id and the brokers.
"""

from __future__ import annotations

import socket
import struct
import sys

_METADATA, _VERSION = 3, 4
_CORRELATION_ID = 1
_CLIENT_ID = b"metaas-probe"


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def _string(body: bytes, offset: int) -> tuple[str | None, int]:
    (length,) = struct.unpack_from(">h", body, offset)
    offset += 2
    if length < 0:
        return None, offset
    return body[offset : offset + length].decode(errors="replace"), offset + length


def probe(host: str, port: int, timeout: float) -> tuple[str | None, list[str]]:
    """The cluster id and the brokers ("id@host:port") the broker reports."""
    header = struct.pack(">hhih", _METADATA, _VERSION, _CORRELATION_ID, len(_CLIENT_ID))
    body = struct.pack(">i?", 0, False)  # no topics, do not create any
    request = header + _CLIENT_ID + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)
        (length,) = struct.unpack(">i", _read_exactly(sock, 4))
        reply = _read_exactly(sock, length)
    (correlation_id,) = struct.unpack_from(">i", reply, 0)
    if correlation_id != _CORRELATION_ID:
        raise ConnectionError(f"reply to correlation id {correlation_id}")
    offset = 4 + 4  # correlation id, throttle time
    (count,) = struct.unpack_from(">i", reply, offset)
    offset += 4
    brokers = []
    for _ in range(count):
        (node_id,) = struct.unpack_from(">i", reply, offset)
        broker_host, offset = _string(reply, offset + 4)
        (broker_port,) = struct.unpack_from(">i", reply, offset)
        _rack, offset = _string(reply, offset + 4)
        brokers.append(f"{node_id}@{broker_host}:{broker_port}")
    cluster_id, offset = _string(reply, offset)
    return cluster_id, brokers


def main() -> int:
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 9092
    try:
        cluster_id, brokers = probe(host, port, timeout=3.0)
    except (OSError, ConnectionError, struct.error) as error:
        print(f"no Kafka broker at {host}:{port}: {error}", file=sys.stderr)
        return 1
    if not brokers:
        print(f"the broker at {host}:{port} lists no live broker yet", file=sys.stderr)
        return 1
    print(f"cluster {cluster_id}, brokers {','.join(brokers)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
