"""The metaas command as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support import METAAS, ServerProcess, eventually

MINUTE = 60_000


def metaas(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [METAAS, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def query_json(server: ServerProcess, *args: str) -> dict[str, object]:
    result = metaas("query", "--target", server.target, "--json", *args)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


def test_write_jsonl_and_csv_then_query(server: ServerProcess, tmp_path: Path) -> None:
    now = time.time_ns() // 1_000_000
    minute = now - now % MINUTE - 2 * MINUTE
    lines = [
        json.dumps(
            {
                "app": "cli",
                "metric": "lat",
                "labels": {"dyno": "web.1"},
                "time_ms": minute + i,
                "value": float(i),
            }
        )
        for i in range(1, 101)
    ]
    lines.append(
        json.dumps(
            {
                "app": "cli",
                "metric": "lat",
                "labels": {"dyno": "web.2"},
                "times_ms": [minute, minute + 1],
                "values": [1000.0, 2000.0],
            }
        )
    )
    jsonl = tmp_path / "samples.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    written = metaas("write", "--target", server.target, str(jsonl), "--batch-size", "30")
    assert written.returncode == 0, written.stderr
    assert "wrote 102 samples in 2 series" in written.stdout

    csv = tmp_path / "samples.csv"
    csv.write_text(
        f"app,metric,time_ms,value,dyno\ncli,lat,{minute},5,web.3\ncli,lat,{minute},7,web.3\n"
    )
    assert metaas("write", "--target", server.target, str(csv)).returncode == 0

    def visible() -> dict[str, object]:
        body = query_json(
            server,
            "--app",
            "cli",
            "--metric",
            "lat",
            "--since",
            "10m",
            "--stats",
            "count,max",
            "--group-by",
            "dyno",
        )
        assert len(body["series"]) == 3  # type: ignore[arg-type]
        return body

    body = eventually(visible)
    by_dyno = {s["labels"]["dyno"]: s["stats"] for s in body["series"]}  # type: ignore[attr-defined]
    assert sum(by_dyno["web.1"]["count"]) == 100
    assert max(by_dyno["web.1"]["max"]) == 100.0
    assert by_dyno["web.2"]["max"] == [2000.0]
    assert by_dyno["web.3"]["count"] == [2]
    assert all(isinstance(count, int) for count in by_dyno["web.1"]["count"])

    table = metaas(
        "query",
        "--target",
        server.target,
        "--app",
        "cli",
        "--metric",
        "lat",
        "--since",
        "10m",
        "--stats",
        "count,p99",
    )
    assert table.returncode == 0
    assert "served by sqlite" in table.stdout
    assert "p99" in table.stdout


def test_demo_generates_traffic_with_progress(server: ServerProcess) -> None:
    result = metaas(
        "demo",
        "--target",
        server.target,
        "--apps",
        "2",
        "--minutes",
        "3",
        "--dynos",
        "2",
        "--rpm",
        "50",
    )
    assert result.returncode == 0, result.stderr
    assert "for 2 apps over 3 minutes" in result.stdout

    def latency_by_status() -> None:
        body = query_json(
            server,
            "--app",
            "demo-1",
            "--metric",
            "router.latency_ms",
            "--since",
            "10m",
            "--stats",
            "count",
            "--group-by",
            "status",
        )
        assert {s["labels"]["status"] for s in body["series"]} >= {"2xx", "5xx"}  # type: ignore[attr-defined]

    eventually(latency_by_status)
    # --since starts on a multiple of --step, as a dashboard's range does, and
    # the hour answers the same count as its minutes.
    by_hour = query_json(
        server, "--app", "demo-1", "--metric", "router.latency_ms", "--since", "10m",
        "--step", "1h", "--stats", "count",
    )  # fmt: skip
    by_minute = query_json(
        server, "--app", "demo-1", "--metric", "router.latency_ms", "--since", "2h",
        "--stats", "count",
    )  # fmt: skip
    hourly: dict[str, Any]
    minutely: dict[str, Any]
    (hourly,) = by_hour["series"]  # type: ignore[misc]
    assert all(int(t) % 3_600_000 == 0 for t in hourly["times_ms"])
    (minutely,) = by_minute["series"]  # type: ignore[misc]
    since_hour = [
        count
        for t, count in zip(minutely["times_ms"], minutely["stats"]["count"], strict=True)
        if int(t) >= int(hourly["times_ms"][0])
    ]
    assert sum(hourly["stats"]["count"]) == sum(since_hour)
    listed = metaas(
        "query",
        "--target",
        server.target,
        "--app",
        "demo-0",
        "--metric",
        "dyno.memory_mb",
        "--since",
        "10m",
        "--json",
    )
    assert json.loads(listed.stdout)["series"]


def test_errors_name_the_field_and_exit_nonzero(server: ServerProcess, tmp_path: Path) -> None:
    bad = metaas(
        "query", "--target", server.target, "--app", "cli", "--metric", "lat", "--stats", "p42"
    )
    assert bad.returncode == 3
    assert "--stats: unknown stat 'p42'" in bad.stderr
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"app": "x"}\n')
    result = metaas("write", "--target", server.target, str(broken))
    assert result.returncode == 2
    assert "line 1" in result.stderr


def test_bad_settings_fail_fast_naming_the_setting(tmp_path: Path) -> None:
    for args, named in [
        (["--listen", "nonsense"], "METAAS_LISTEN / --listen"),
        (["--flush-interval-s", "0"], "METAAS_FLUSH_INTERVAL_S / --flush-interval-s"),
        (["--retention-days", "0"], "METAAS_RETENTION_DAYS / --retention-days"),
        (["--storage", "mysql://x"], "METAAS_STORAGE / --storage"),
        (["--shadow-timeout-s", "soon"], "METAAS_SHADOW_TIMEOUT_S / --shadow-timeout-s"),
        (["--compression", "lz4"], "METAAS_COMPRESSION / --compression"),
    ]:
        result = metaas("serve", "--wal-dir", str(tmp_path / "wal"), *args)
        assert result.returncode == 2, (args, result.stderr)
        assert named in result.stderr, (args, result.stderr)
        assert len(result.stderr.splitlines()) == 1, result.stderr


def serve_refused(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """The one line ``metaas serve`` exits with (status 2) for ``args``."""
    result = subprocess.run(
        [METAAS, "serve", "--wal-dir", str(tmp_path / "wal"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ")
    return line


def test_a_variable_is_refused_like_its_flag(tmp_path: Path) -> None:
    by_flag = serve_refused(tmp_path, "--guard-error-rate", "1.5")
    by_variable = serve_refused(tmp_path, env={"METAAS_GUARD_ERROR_RATE": "1.5"})
    assert by_flag == by_variable
    assert "METAAS_GUARD_ERROR_RATE / --guard-error-rate" in by_flag
    assert "expected a fraction in (0, 1]" in by_flag


def test_flags_without_a_migration_target_are_refused(tmp_path: Path) -> None:
    flags = tmp_path / "flags.json"
    flags.write_text('{"flags": {}}')
    line = serve_refused(tmp_path, "--flags", str(flags))
    assert "METAAS_FLAGS / --flags" in line
    assert "METAAS_MIGRATION_TARGET / --migration-target" in line


def test_a_flag_file_that_would_not_be_obeyed_is_refused_at_start(tmp_path: Path) -> None:
    target = ("--migration-target", f"sqlite:///{tmp_path / 'new.db'}")
    flags = tmp_path / "flags.json"
    for variants, named, accepted in [
        ('"migration-stage": {"variants": {"on": "shaddow"}, "defaultVariant": "on"}',
         "flag migration-stage, variant 'on': invalid value 'shaddow'",
         "expected off, dualwrite, shadow, live, rampdown or complete"),
        ('"migration-check-ratio": {"variants": {"all": 1.5}, "defaultVariant": "all"}',
         "flag migration-check-ratio, variant 'all': invalid value 1.5",
         "expected a number from 0 to 1"),
        ('"migration-stage": {', "METAAS_FLAGS / --flags", "a flagd flag file in JSON"),
    ]:  # fmt: skip
        flags.write_text('{"flags": {' + variants + "}}")
        line = serve_refused(tmp_path, *target, "--flags", str(flags))
        assert line.startswith("Error: METAAS_FLAGS / --flags")
        assert named in line
        assert accepted in line
