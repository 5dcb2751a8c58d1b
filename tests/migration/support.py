"""Flag files and stored-data probes for migration tests."""

from __future__ import annotations

from bench.flags import STAGES, write_flags

__all__ = ["STAGES", "StorageProbe", "write_flags"]


class StorageProbe:
    """Reads what a backend stores, through the storage layer, from a test
    that is otherwise synchronous (its own event loop on a thread)."""

    def __init__(self, urls: dict[str, str]) -> None:
        import asyncio
        import threading

        from metaas.server.storage import StorageContext, open_storage

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        context = StorageContext(30 * 86_400_000)

        async def open_all() -> dict[str, object]:
            return {role: await open_storage(url, context) for role, url in urls.items()}

        self._storages = self._run(open_all())

    def _run(self, coroutine):  # type: ignore[no-untyped-def]
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(60)

    def count(self, role: str, app: str, metric: str, label: tuple[str, str]) -> int:
        import time

        now = time.time_ns() // 1_000_000
        storage = self._storages[role]
        partials = self._run(storage.read_partials(app, metric, now - 3_600_000, now + 600_000))  # type: ignore[attr-defined]
        name, value = label
        return sum(
            p.distribution.count for p in partials if dict(p.series.labels).get(name) == value
        )

    def close(self) -> None:
        for storage in self._storages.values():
            self._run(storage.close())  # type: ignore[attr-defined]
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
