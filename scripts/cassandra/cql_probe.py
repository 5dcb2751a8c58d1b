"""Exit 0 when a CQL server answers a query at HOST:PORT, 1 otherwise.

Speaks just enough of the native protocol (v4: STARTUP, then one QUERY) to
prove the server serves CQL, with the standard library only, so it works
before any virtualenv exists. Prints the server's release version.
"""

from __future__ import annotations

import socket
import struct
import sys

_HEADER = struct.Struct(">BBhBI")
_VERSION = 0x04
_STARTUP, _ERROR, _READY, _QUERY, _RESULT = 0x01, 0x00, 0x02, 0x07, 0x08
_ONE = 0x0001


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">H", len(data)) + data


def _frame(stream: int, opcode: int, body: bytes) -> bytes:
    return _HEADER.pack(_VERSION, 0, stream, opcode, len(body)) + body


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def _exchange(sock: socket.socket, stream: int, opcode: int, body: bytes) -> tuple[int, bytes]:
    sock.sendall(_frame(stream, opcode, body))
    _version, _flags, _stream, reply, length = _HEADER.unpack(_read_exactly(sock, _HEADER.size))
    return reply, _read_exactly(sock, length)


def probe(host: str, port: int, timeout: float) -> str:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        startup = struct.pack(">H", 1) + _string("CQL_VERSION") + _string("3.0.0")
        opcode, body = _exchange(sock, 1, _STARTUP, startup)
        if opcode != _READY:
            raise ConnectionError(f"STARTUP answered with opcode {opcode}: {body[6:]!r}")
        query = "SELECT release_version FROM system.local"
        body = struct.pack(">I", len(query)) + query.encode() + struct.pack(">HB", _ONE, 0)
        opcode, body = _exchange(sock, 2, _QUERY, body)
        if opcode != _RESULT:
            raise ConnectionError(f"query answered with opcode {opcode}: {body[6:]!r}")
        return _single_text_cell(body)


def _single_text_cell(body: bytes) -> str:
    """The one text cell of a Rows result (kind 2) with one column."""
    kind, flags, columns = struct.unpack_from(">iii", body, 0)
    if kind != 2 or columns != 1:
        raise ConnectionError(f"unexpected result kind {kind} with {columns} columns")
    offset = 12
    names = 3 if not flags & 0x0001 else 1  # keyspace, table per column unless global
    if flags & 0x0001:
        offset = _skip_strings(body, offset, 2)
    offset = _skip_strings(body, offset, names) + 2  # column name(s), then its type id
    (rows,) = struct.unpack_from(">i", body, offset)
    if rows < 1:
        return "?"
    (length,) = struct.unpack_from(">i", body, offset + 4)
    return body[offset + 8 : offset + 8 + length].decode(errors="replace")


def _skip_strings(body: bytes, offset: int, count: int) -> int:
    for _ in range(count):
        (length,) = struct.unpack_from(">H", body, offset)
        offset += 2 + length
    return offset


def main() -> int:
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 9042
    try:
        release = probe(host, port, timeout=3.0)
    except (OSError, ConnectionError, struct.error) as error:
        print(f"no CQL at {host}:{port}: {error}", file=sys.stderr)
        return 1
    print(release)
    return 0


if __name__ == "__main__":
    sys.exit(main())
