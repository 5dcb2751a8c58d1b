"""The migration report, from real traffic, rendered in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from PIL import Image

from metaas.client import Client, Series
from tests.migration.support import write_flags
from tests.support import METAAS, ServerProcess, eventually

MINUTE = 60_000
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def test_report_renders_charts_from_real_data(tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: make install installs Debian's chromium"
    flags = tmp_path / "flags.json"
    write_flags(flags, {"shop": "off"})
    server = ServerProcess(
        tmp_path / "server",
        storage=f"sqlite:///{tmp_path / 'old.db'}",
        extra=("--migration-target", f"sqlite:///{tmp_path / 'new.db'}", "--flags", str(flags)),
    ).start()
    report = tmp_path / "report.html"
    try:
        minute = time.time_ns() // 1_000_000 // MINUTE * MINUTE - 5 * MINUTE
        with Client(server.target) as client:
            client.write([Series("shop", "latency", [minute], [42.0], {"dyno": "web.1"})])
            time.sleep(0.5)  # stored on the old backend only
            write_flags(flags, {"shop": "shadow"})
            eventually(lambda: _stage(client, "shadow"), timeout=5)
            for _ in range(20):
                client.query_range("shop", "latency", minute - MINUTE, minute + MINUTE)
        result = subprocess.run(
            [METAAS, "migration", "report", "--target", server.target, "--out", str(report)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    finally:
        server.stop()

    page = report.read_text()
    assert page.count("<polyline") >= 4  # latency (old and new), errors, consistency
    assert page.count("<circle") >= 6 + 2 + 1  # data points: latency, errors, consistency
    assert "only in primary" in page  # the mismatch sample with its diff
    assert "<script" not in page  # self-contained: nothing to fetch or run
    assert "http" not in page

    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1000,1600",
            report.as_uri(),
        ],
        capture_output=True,
        check=True,
        timeout=120,
    )
    image = Image.open(shot).convert("RGB")
    colors = image.getcolors(maxcolors=1 << 20) or []
    # Line colours of the charts: old (orange) and new (blue) backends.
    assert any(count > 50 and rgb == (0xD9, 0x82, 0x2B) for count, rgb in colors)
    assert any(count > 50 and rgb == (0x2B, 0x7B, 0xD9) for count, rgb in colors)


def _stage(client: Client, stage: str) -> None:
    assert client.migration_status("shop").stage == stage
