"""Values spread over the whole range of doubles: every sketch is as wide as
it can be, and the server's memory and storage stay bounded."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from metaas.client import Client, Series
from tests.support import ServerProcess, eventually

MINUTE = 60_000
SERIES = 4_000
PER_SERIES = 8
PER_REQUEST = 500  # series per write
# Log-uniform between these: 1e289 is the largest magnitude the server accepts.
LOWEST_EXPONENT, HIGHEST_EXPONENT = -300, 289
# Sketches of at most 2,048 buckets of narrow counts peak near 240 MiB here;
# 8,192 buckets of 8-byte counts went past 2.7 GiB.
MEMORY_BOUND_MIB = 400


def _status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field}")


def _series(now: int) -> list[Series]:
    rng = np.random.default_rng(7)
    return [
        Series(
            "wide",
            "m",
            np.sort(rng.integers(now - 4 * MINUTE, now, PER_SERIES)).tolist(),
            (10.0 ** rng.uniform(LOWEST_EXPONENT, HIGHEST_EXPONENT, PER_SERIES)).tolist(),
            {"series": str(s)},
        )
        for s in range(SERIES)
    ]


def test_wide_values_keep_memory_bounded(tmp_path: Path, figures: dict[str, object]) -> None:
    server = ServerProcess(tmp_path / "server").start()
    try:
        assert server.process is not None
        pid = server.process.pid
        idle = _status_mib(pid, "VmRSS")
        now = time.time_ns() // 1_000_000
        series = _series(now)
        with Client(server.target, timeout=60) as client:
            for first in range(0, SERIES, PER_REQUEST):
                batch = series[first : first + PER_REQUEST]
                assert client.write(batch) == len(batch) * PER_SERIES

            def all_visible() -> None:
                result = client.query_range(
                    "wide", "m", now - 5 * MINUTE, now + MINUTE, stats=["count"]
                )
                counted = sum(sum(s.stats["count"]) for s in result.series)
                assert counted == SERIES * PER_SERIES, counted

            eventually(all_visible, timeout=60, interval=0.5)
            # One whole-app query over every series and minute.
            result = client.query_range(
                "wide",
                "m",
                now - 5 * MINUTE,
                now + MINUTE,
                step_ms=6 * MINUTE,
                stats=["count", "p50", "p99", "max"],
            )
        [whole] = result.series
        assert whole.stats["count"] == (float(SERIES * PER_SERIES),)
        highest = max(max(s.values) for s in series)
        assert whole.stats["max"] == (highest,)
        peak = _status_mib(pid, "VmHWM")
        stored = sum(f.stat().st_size for f in server.data_dir.glob("metaas.db*")) / 2**20
    finally:
        server.stop()
    figures.update(
        {
            "written": f"{SERIES} series x {PER_SERIES} values, log-uniform over"
            f" [1e{LOWEST_EXPONENT}, 1e{HIGHEST_EXPONENT}]",
            "idle RSS (MiB)": round(idle),
            "peak RSS (MiB)": round(peak),
            "SQLite with its WAL (MiB)": round(stored, 1),
        }
    )
    assert peak < MEMORY_BOUND_MIB, f"peak RSS {peak:.0f} MiB"
