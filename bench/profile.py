"""Optional profiling (``--profile``): py-spy samples a server while a load
runs a second time, and the stacks are summarised by function.

py-spy is not a project dependency: ``.venv/bin/pip install py-spy`` first.
The measured figures never come from a profiled run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._process import BIN, Child

_LINE = re.compile(r":\d+\)$")
# Frames on every stack (the CLI, the event loop, worker threads) say nothing
# about where the time goes; they are left out of the inclusive list.
_PLUMBING = re.compile(
    r"\((click/|asyncio/|threading\.py|concurrent/futures/|selectors\.py|metaas\)|cli/main\.py)"
)


def py_spy() -> str | None:
    found = BIN / "py-spy"
    return str(found) if found.is_file() else shutil.which("py-spy")


class Profiler:
    def __init__(self, out_dir: Path, duration_s: float, rate_hz: int = 100) -> None:
        self.out_dir = out_dir
        self.duration_s = duration_s
        self.rate_hz = rate_hz
        self.summaries: dict[str, dict[str, Any]] = {}

    def during(self, name: str, server: Child, load: Callable[[], object]) -> dict[str, Any]:
        """Sample ``server`` while ``load`` runs; summary of where time goes."""
        tool = py_spy()
        if tool is None:
            return {"error": "py-spy is not installed (.venv/bin/pip install py-spy)"}
        raw = self.out_dir / f"profile-{name}.txt"
        recorder = subprocess.Popen(
            [
                tool,
                "record",
                "--pid",
                str(server.pid),
                "--duration",
                str(int(self.duration_s)),
                "--rate",
                str(self.rate_hz),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        load()
        _, stderr = recorder.communicate(timeout=120)
        if not raw.exists():
            return {"error": f"py-spy failed: {stderr.decode(errors='replace')[-500:]}"}
        summary = summarise(raw.read_text(), self.duration_s * self.rate_hz)
        raw.unlink()
        self.summaries[name] = summary
        return summary


def summarise(collapsed: str, possible_samples: float, top: int = 25) -> dict[str, Any]:
    """Self and inclusive shares of the sampled (non-idle) stacks of all
    threads, by function; ``busy`` is sampled stacks per sampling tick (above
    1 when several threads ran)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            if not _PLUMBING.search(frame):
                inclusive[frame] += count

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(frame, round(100 * n / total, 1)) for frame, n in counter.most_common(top)]

    return {
        "samples": total,
        "busy": round(total / possible_samples, 2) if possible_samples else None,
        "self_pct": shares(own) if total else [],
        "inclusive_pct": shares(inclusive) if total else [],
    }


def _frame(frame: str) -> str:
    """``function (file)``: py-spy's frame without its line number."""
    return _LINE.sub(")", frame.strip())
