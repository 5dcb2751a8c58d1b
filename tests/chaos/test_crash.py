"""kill -9 during sustained, concurrent ingest: every acknowledged sample is
queryable after a restart, and none is counted twice."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from metaas.client import Client, MetaasError, Series
from tests.support import ServerProcess, eventually

MINUTE = 60_000
PER_REQUEST = 500


def test_kill_during_sustained_ingest(tmp_path: Path, figures: dict[str, object]) -> None:
    data = tmp_path / "server"
    server = ServerProcess(data, flush_interval_s=0.3).start()
    acked: set[int] = set()
    sent: set[int] = set()
    lock = threading.Lock()
    stop = threading.Event()
    start_minute = time.time_ns() // 1_000_000 // MINUTE * MINUTE - 3 * MINUTE

    def writer(worker: int) -> None:
        with Client(server.target, timeout=5) as client:
            request = worker
            while not stop.is_set():
                with lock:
                    sent.add(request)
                times = [
                    start_minute + (request * 7 + i) % (3 * MINUTE) for i in range(PER_REQUEST)
                ]
                try:
                    client.write(
                        [Series("crash", "m", times, [1.0] * PER_REQUEST, {"req": str(request)})],
                        idempotency_key=f"r{request}",
                    )
                except MetaasError:
                    return  # the server died under this request
                with lock:
                    acked.add(request)
                request += 4

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(3.0)
    server.kill()
    stop.set()
    for thread in threads:
        thread.join(30)
    assert len(acked) > 20

    restarted = ServerProcess(data, flush_interval_s=0.3).start()
    try:
        with Client(restarted.target) as client:

            def all_acked_visible() -> dict[str, float]:
                result = client.query_range(
                    "crash",
                    "m",
                    start_minute,
                    start_minute + 4 * MINUTE,
                    step_ms=4 * MINUTE,
                    stats=["count"],
                    group_by=["req"],
                )
                counts = {s.labels["req"]: sum(s.stats["count"]) for s in result.series}
                missing = [r for r in acked if counts.get(str(r)) != PER_REQUEST]
                assert not missing, f"{len(missing)} acknowledged requests incomplete"
                return counts

            counts = eventually(all_acked_visible, timeout=30)
    finally:
        restarted.stop()
    # Unacknowledged requests (in flight at the kill) are all or nothing.
    assert all(c in (0.0, float(PER_REQUEST)) for c in counts.values())
    assert set(counts) <= {str(r) for r in sent}
    figures.update(
        {
            "faults injected": "kill -9 under 4 concurrent writers",
            "samples acknowledged": len(acked) * PER_REQUEST,
            "samples recovered": int(sum(counts[str(r)] for r in acked)),
            "in-flight requests applied whole": sum(
                1 for r, c in counts.items() if int(r) not in acked
            ),
        }
    )
