"""The migration and storage commands as a user runs them: what they print,
on which stream, and their exit statuses (0 done, 1 found a problem, 3
refused by the server)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from metaas.client import Client, Series
from metaas.server.model import Partial, Resolution, SeriesKey
from metaas.server.sketch import Distribution
from metaas.server.storage import StorageContext, open_storage
from metaas.server.storage.sqlite.schema import SCHEMA_VERSION
from tests.migration.support import write_flags
from tests.support import METAAS, ServerProcess, eventually

MINUTE = 60_000
HOUR = 3_600_000
RETENTION_MS = 30 * 86_400_000


def metaas(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([METAAS, *args], capture_output=True, text=True, timeout=120, check=False)


def one_line(stderr: str) -> str:
    """The single line a failing command prints (beside its progress bar),
    with no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip() and "━" not in line]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def migrating(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server migrating sqlite to sqlite: app shop in shadow, whose data
    was written while it was off (so the new backend lacks it), and app
    cart in dualwrite; every read of shop compared, 20 mismatches seen."""
    flags = tmp_path / "flags.json"
    write_flags(flags, {"shop": "off", "cart": "dualwrite"})
    server = ServerProcess(
        tmp_path / "server",
        storage=f"sqlite:///{tmp_path / 'old.db'}",
        extra=("--migration-target", f"sqlite:///{tmp_path / 'new.db'}", "--flags", str(flags)),
    ).start()
    try:
        minute = time.time_ns() // 1_000_000 // MINUTE * MINUTE - 8 * MINUTE
        times = [minute + m * MINUTE for m in range(4)]
        with Client(server.target) as client:
            client.write(
                [
                    Series("shop", "latency", times, [1.0, 2.0, 3.0, 4.0], {"dyno": dyno})
                    for dyno in ("web.1", "web.2")
                ]
            )
            eventually(lambda: _stored(client, minute, 8), timeout=10)
            write_flags(flags, {"shop": "shadow", "cart": "dualwrite"})
            eventually(lambda: _stage(client, "shop", "shadow"), timeout=5)
            for _ in range(20):
                client.query_range("shop", "latency", minute, minute + 4 * MINUTE)
            eventually(lambda: _compared(client, 20), timeout=10)
        yield server
    finally:
        server.stop()


def _stored(client: Client, minute: int, count: int) -> None:
    result = client.query_range("shop", "latency", minute, minute + 4 * MINUTE, stats=["count"])
    assert sum(sum(s.stats["count"]) for s in result.series) == count


def _stage(client: Client, app: str, stage: str) -> None:
    assert client.migration_status(app).stage == stage


def _compared(client: Client, count: int) -> None:
    assert client.migration_status().comparisons == count


def test_status_is_a_readable_summary(migrating: ServerProcess) -> None:
    result = metaas("migration", "status", "--target", migrating.target)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "migration    on: old sqlite → new sqlite" in out
    assert "20 comparisons, 20 mismatches (100.0%)" in out
    # each app's stage, and the stage of the apps the flag file does not name
    assert re.search(r"^  cart +dualwrite +1\b", out, re.MULTILINE), out
    assert re.search(r"^  shop +shadow +1\b", out, re.MULTILINE), out
    assert re.search(r"^  \(every other app\) +off", out, re.MULTILINE), out
    # a table of backends with their reads, errors, latency and write lag
    assert re.search(r"^  role +backend +reads +read errors .* write lag s$", out, re.MULTILINE)
    assert re.search(r"^  new +sqlite +\d+ +0 ", out, re.MULTILINE), out
    # 20 near-identical mismatches are one row with their count
    assert "recent mismatches (20, in 1 group):" in out
    assert re.search(r"^  shop +latency +only in primary +20 +shadow ", out, re.MULTILINE), out
    assert "(all series)" in out
    assert "{}" not in out
    assert "hint: the new backend lacks history of app shop" in out
    assert "metaas migration verify --app shop --since 30d --repair" in out
    assert "fallbacks  none" in out
    assert "ingest problems  none" in out
    # the flag file as its own indented block, not one escaped string
    flags = out.split("flags (the flag file in force):\n")[1]
    assert json.loads(flags)["flags"]["migration-stage"]["defaultVariant"] == "off"
    assert all(line.startswith("    ") for line in flags.splitlines() if line)
    assert "\\n" not in out
    assert "migrationEnabled" not in out


def test_status_as_json_has_the_proto_field_names(migrating: ServerProcess) -> None:
    result = metaas(
        "migration", "status", "--target", migrating.target, "--app", "shop", "--output", "json"
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["migration_enabled"] is True
    assert status["stage"] == "shadow"
    assert status["check_ratio"] == 1.0
    assert {"old_backend", "new_backend", "recent_mismatches", "ingest_problems"} <= set(status)
    assert "latency_p99_ms" in status["backends"][0]
    assert not [key for key in status if re.search("[A-Z]", key)]


def test_verify_shows_some_differences_counts_the_rest_and_exits_1(
    migrating: ServerProcess,
) -> None:
    args = ("migration", "verify", "--target", migrating.target, "--app", "shop", "--since", "1h")
    found = metaas(*args, "--max-diffs", "3")
    assert found.returncode == 1, found.stderr
    first, *diffs = found.stdout.splitlines()
    mismatched = int(re.search(r"mismatched (\d+)", first)[1])  # type: ignore[index]
    assert mismatched > 10
    assert len(diffs) == 4
    assert all(line.startswith("  missing on new: ") for line in diffs[:3])
    assert diffs[3] == f"  ... and {mismatched - 3} more"
    assert one_line(found.stderr).startswith(f"Error: backends differ: {mismatched} of ")

    repaired = metaas(*args, "--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert f"repaired {mismatched}" in repaired.stdout

    same = metaas(*args)
    assert same.returncode == 0, same.stderr
    assert "mismatched 0, repaired 0" in same.stdout
    assert "more" not in same.stdout


def test_verify_of_an_app_with_no_data_says_so_and_exits_0(migrating: ServerProcess) -> None:
    result = metaas("migration", "verify", "--target", migrating.target, "--app", "nobody")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "nothing to verify: neither backend has series of app nobody" in result.stderr


def test_without_a_migration_verify_is_refused_and_status_says_so(
    server: ServerProcess, tmp_path: Path
) -> None:
    refused = metaas("migration", "verify", "--target", server.target, "--app", "shop")
    assert refused.returncode == 3, refused.stderr
    line = one_line(refused.stderr)
    assert line == (
        "Error: FAILED_PRECONDITION: no migration is configured (set METAAS_MIGRATION_TARGET)"
    )

    status = metaas("migration", "status", "--target", server.target)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("migration  not configured: this server reads and writes")
    assert "--migration-target / METAAS_MIGRATION_TARGET" in status.stdout

    report = tmp_path / "report.html"
    written = metaas("migration", "report", "--target", server.target, "--out", str(report))
    assert written.returncode == 0, written.stderr
    assert "migration is not configured" in written.stderr


def test_schema_apply_says_it_created_the_schema_then_that_it_is_current(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    created = metaas("schema", "apply", "--storage", url)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == (
        f"created the sqlite schema (version {SCHEMA_VERSION}) in {tmp_path / 'new.db'}"
    )
    again = metaas("schema", "apply", "--storage", url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == (
        f"sqlite schema is current (version {SCHEMA_VERSION}) in {tmp_path / 'new.db'}"
    )


def _store_minutes(url: str, hours: list[int]) -> None:
    """Minutes of shop's latency stored without rollups or views, in ``hours``."""
    rng = np.random.default_rng(5)
    minutes = [
        Partial(
            SeriesKey.of("shop", "latency", {"dyno": "web.1", "status": "2xx"}),
            hour + m * MINUTE,
            "w1",
            1,
            Distribution.from_values(rng.lognormal(3.0, 1.0, 20)),
        )
        for hour in hours
        for m in range(0, 60, 10)
    ]

    async def store() -> None:
        storage = await open_storage(url, StorageContext(RETENTION_MS))
        try:
            await storage.write_partials(minutes)
        finally:
            await storage.close()

    asyncio.run(store())


@pytest.mark.parametrize(
    ("command", "what"), [("rollups", "hourly rollups"), ("views", "view partials")]
)
def test_rebuild_counts_hours_with_data_and_says_why_it_rebuilt_nothing(
    tmp_path: Path, command: str, what: str
) -> None:
    url = f"sqlite:///{tmp_path / 'metaas.db'}"
    first = Resolution.HOUR.floor(time.time_ns() // 1_000_000) - 6 * HOUR
    _store_minutes(url, [first, first + 2 * HOUR])
    span = ("--start", str(first), "--end", str(first + 4 * HOUR))

    rebuilt = metaas(command, "rebuild", "--storage", url, "--app", "shop", *span)
    assert rebuilt.returncode == 0, rebuilt.stderr
    # two hours of the four hold minutes: the empty ones are not counted
    assert re.fullmatch(
        rf"rebuilt \d+ {what} over 2 metric-hours with stored minutes \(of 4 in the range\) "
        r"of app shop\n",
        rebuilt.stdout,
    ), rebuilt.stdout

    no_app = metaas(command, "rebuild", "--storage", url, "--app", "shpo", *span)
    assert no_app.returncode == 0, no_app.stderr
    assert no_app.stdout == ""
    assert "rebuilt nothing: app shpo has no stored minutes from " in no_app.stderr
    assert "check --app" in no_app.stderr

    no_metric = metaas(
        command, "rebuild", "--storage", url, "--app", "shop", "--metric", "latncy", *span
    )
    assert no_metric.returncode == 0, no_metric.stderr
    assert no_metric.stdout == ""
    assert "app shop has no stored minutes of latncy" in no_metric.stderr
    assert "its metrics then: latency (check --metric)" in no_metric.stderr

    backwards = ("--start", str(first + 4 * HOUR), "--end", str(first))
    empty = metaas(command, "rebuild", "--storage", url, "--app", "shop", *backwards)
    assert empty.returncode == 0, empty.stderr
    assert "rebuilt nothing: the range is empty" in empty.stderr
    assert "rebuilt 0" not in empty.stdout + empty.stderr
