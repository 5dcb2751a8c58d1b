"""One app walked through every stage on a real server (SQLite old and new):
where writes land, which backend serves, when comparisons happen; flag
changes without restart; mismatches found, verified and repaired."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from metaas.client import Client, Series
from tests.migration.support import STAGES, StorageProbe, write_flags
from tests.support import ServerProcess, eventually

MINUTE = 60_000
APP = "walk"
# stage -> (old gets writes, new gets writes, reads by role, compared)
TABLE = {
    "off": (True, False, "old", False),
    "dualwrite": (True, True, "old", False),
    "shadow": (True, True, "old", True),
    "live": (True, True, "new", True),
    "rampdown": (True, True, "new", False),
    "complete": (False, True, "new", False),
}


# The same pair with shadow reads in a worker process (--shadow-workers 1).
WORKERS = "sqlite-to-sqlite-shadow-worker"


def _urls(pair: str, tmp_path: Path) -> tuple[str, str]:
    if pair in ("sqlite-to-sqlite", WORKERS):
        return f"sqlite:///{tmp_path / 'old.db'}", f"sqlite:///{tmp_path / 'new.db'}"
    # Real Apache Cassandra (old) and the DynamoDB emulator (new), as make test starts them.
    from tests.backends import cassandra, dynamodb

    dynamodb.use_test_credentials()
    keyspace = f"migration_{uuid.uuid4().hex[:10]}"
    return cassandra.url(keyspace), asyncio.run(dynamodb.new_table("migration"))


@pytest.fixture(params=["sqlite-to-sqlite", WORKERS, "cassandra-to-dynamodb"])
def migrating(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    old_url, new_url = _urls(request.param, tmp_path)
    workers = ("--shadow-workers", "1") if request.param == WORKERS else ()
    flags = tmp_path / "flags.json"
    write_flags(flags, {})
    server = ServerProcess(
        tmp_path / "server",
        storage=old_url,
        extra=(
            "--migration-target",
            new_url,
            "--flags",
            str(flags),
            "--compare-ignore-newest-minutes",
            "0",
            *workers,
        ),
        env={"AWS_ACCESS_KEY_ID": "metaas-test", "AWS_SECRET_ACCESS_KEY": "metaas-test"},
    ).start()
    probe = StorageProbe({"old": old_url, "new": new_url})
    try:
        yield server, flags, probe, request.param
    finally:
        probe.close()
        server.stop()


def reads_by_role(client: Client) -> dict[str, int]:
    return {b.role: b.reads for b in client.migration_status().backends}


def test_one_app_through_all_six_stages(migrating) -> None:  # type: ignore[no-untyped-def]
    server, flags, probe, pair = migrating
    served = (
        {"old": "sqlite", "new": "sqlite"}
        if pair in ("sqlite-to-sqlite", WORKERS)
        else {"old": "cassandra", "new": "dynamodb"}
    )
    minute = time.time_ns() // 1_000_000 // MINUTE * MINUTE - 5 * MINUTE
    with Client(server.target) as client:
        for stage in STAGES:
            write_flags(flags, {APP: stage})
            started = time.monotonic()
            eventually(lambda s=stage: _assert_stage(client, s), timeout=5)
            assert time.monotonic() - started < 5

            client.write(
                [
                    Series(
                        APP,
                        "latency",
                        [minute + i for i in range(10)],
                        [float(i) for i in range(10)],
                        {"phase": stage},
                    )
                ]
            )
            old_gets, new_gets, reader, compared = TABLE[stage]
            expected = (10 if old_gets else 0, 10 if new_gets else 0)
            eventually(lambda s=stage, e=expected: _assert_counts(probe, ("phase", s), e))

            before_reads = reads_by_role(client)
            before_comparisons = client.migration_status().comparisons
            result = client.query_range(
                APP, "latency", minute, minute + MINUTE, stats=["count"], matchers={"phase": stage}
            )
            assert result.series[0].stats["count"] == (10.0,), stage
            assert result.served_by == served[reader], stage
            # A comparison finishes after the answer, within the shadow timeout
            # (0.25 s): wait past it, then count.
            time.sleep(0.6)
            after = client.migration_status()
            reads = {b.role: b.reads for b in after.backends}
            assert reads.get(reader, 0) > before_reads.get(reader, 0), stage
            assert after.comparisons == before_comparisons + (1 if compared else 0), stage
            assert after.mismatches == 0, (stage, list(after.recent_mismatches))


def _with_mismatches(client: Client, count: int):  # type: ignore[no-untyped-def]
    status = client.migration_status(APP)
    assert status.mismatches == count
    return status


def _with_comparisons(client: Client, count: int):  # type: ignore[no-untyped-def]
    status = client.migration_status(APP)
    assert status.comparisons == count
    return status


def _assert_stage(client: Client, stage: str) -> None:
    assert client.migration_status(APP).stage == stage


def _assert_counts(probe: StorageProbe, label: tuple[str, str], expected: tuple[int, int]) -> None:
    counts = (probe.count("old", APP, "latency", label), probe.count("new", APP, "latency", label))
    assert counts == expected


def test_mismatches_found_then_verified_and_repaired(migrating) -> None:  # type: ignore[no-untyped-def]
    server, flags, probe, _ = migrating
    minute = time.time_ns() // 1_000_000 // MINUTE * MINUTE - 5 * MINUTE
    with Client(server.target) as client:
        client.write(
            [Series(APP, "latency", [minute + 1, minute + 2], [5.0, 7.0], {"dyno": "web.1"})]
        )
        eventually(lambda: _assert_counts(probe, ("dyno", "web.1"), (2, 0)))  # written while off

        write_flags(flags, {APP: "shadow"})
        eventually(lambda: _assert_stage(client, "shadow"), timeout=5)
        client.query_range(APP, "latency", minute, minute + MINUTE, stats=["count", "max"])
        status = eventually(lambda: _with_mismatches(client, 1))
        (sample,) = status.recent_mismatches
        assert sample.app == APP
        assert sample.diff
        assert "only in primary" in sample.diff[0]

        progress = list(client.verify_range(APP, minute - MINUTE, minute + MINUTE))
        assert progress[-1].done
        # The minute and the hourly rollup that holds it, of the series and
        # of its two views (the whole metric, and by status).
        assert progress[-1].partials_mismatched == 6
        assert progress[-1].partials_repaired == 0
        assert all("missing on new" in sample for sample in progress[-1].samples)
        assert any(" hour from " in sample for sample in progress[-1].samples)

        repaired = list(client.verify_range(APP, minute - MINUTE, minute + MINUTE, repair=True))
        assert repaired[-1].partials_repaired == 6
        assert probe.count("new", APP, "latency", ("dyno", "web.1")) == 2
        assert (
            list(client.verify_range(APP, minute - MINUTE, minute + MINUTE))[-1].partials_mismatched
            == 0
        )

        client.query_range(APP, "latency", minute, minute + MINUTE, stats=["count", "max"])
        later = eventually(lambda: _with_comparisons(client, status.comparisons + 1))
        assert later.mismatches == status.mismatches  # consistent now


@pytest.mark.parametrize("migrating", ["sqlite-to-sqlite"], indirect=True)
def test_broken_flag_file_changes_nothing(migrating) -> None:  # type: ignore[no-untyped-def]
    server, flags, _, _ = migrating
    with Client(server.target) as client:
        write_flags(flags, {APP: "live"})
        eventually(lambda: _assert_stage(client, "live"), timeout=5)
        flags.write_text('{"flags": {"migration-stage": ')
        time.sleep(2.5)
        assert client.migration_status(APP).stage == "live"
        minute = time.time_ns() // 1_000_000 // MINUTE * MINUTE
        client.write([Series(APP, "m", [minute], [1.0])])
        assert client.query_range(APP, "m", minute - MINUTE, minute + MINUTE).served_by == "sqlite"
        write_flags(flags, {APP: "rampdown"})
        eventually(lambda: _assert_stage(client, "rampdown"), timeout=5)
    log = server.log()
    assert log.count("flags rejected") == 1
    assert "Traceback" not in log
