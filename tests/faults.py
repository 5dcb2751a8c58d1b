"""A TCP proxy that injects faults between metaas and a backend: latency,
dropped connections, refused connections. It runs its own event loop on a
thread so synchronous tests can drive it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field

from tests.support import free_port


@dataclass
class Faults:
    latency_s: float = 0.0
    refuse: bool = False
    injected: list[str] = field(default_factory=list)


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.faults = Faults()
        self._loop = asyncio.new_event_loop()
        self._connections: set[asyncio.StreamWriter] = set()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._start())

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _call(self, coroutine):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        if self.faults.refuse:
            client_writer.close()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self._connections.update((client_writer, upstream_writer))

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await reader.read(65536):
                    if self.faults.latency_s:
                        await asyncio.sleep(self.faults.latency_s)
                    writer.write(data)
                    await writer.drain()
            writer.close()

        await asyncio.gather(
            pump(client_reader, upstream_writer), pump(upstream_reader, client_writer)
        )
        self._connections.difference_update((client_writer, upstream_writer))

    def add_latency(self, seconds: float) -> None:
        self.faults.latency_s = seconds
        self.faults.injected.append(f"latency {seconds * 1000:.0f} ms")

    def outage(self) -> None:
        """Drop every open connection and refuse new ones (a stopped backend)."""
        self.faults.refuse = True
        self.faults.injected.append("outage")
        self._loop.call_soon_threadsafe(self._drop_all)

    def _drop_all(self) -> None:
        for writer in list(self._connections):
            writer.transport.abort()
        self._connections.clear()

    def heal(self) -> None:
        self.faults.latency_s = 0.0
        self.faults.refuse = False

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            self._drop_all()

        self._call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
