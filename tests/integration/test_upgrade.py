"""Data stored by an earlier release keeps reading: each backend is loaded
with the store that release wrote (``tests/fixtures/upgrade/<release>``,
made by ``generate.py`` there) and must answer that release's queries as it
did, to the last bit. The fixtures hold encoding 1 distributions, SQLite
schema 3 (before the label index) and the views and rollups of the time."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cassandra.concurrent import execute_concurrent_with_args

from metaas.server.storage import Storage, StorageContext, open_storage
from metaas.server.storage.sqlite.schema import SCHEMA_VERSION
from tests.backends import cassandra as cassandra_service
from tests.backends import dynamodb as dynamodb_service
from tests.fixtures.upgrade.generate import APP, NOW, RETENTION_MS, Clock, answers

RELEASES = sorted((Path(__file__).parents[1] / "fixtures" / "upgrade").glob("release-*"))


def _expected(release: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((release / "answers.json").read_text())
    return loaded


def _load(path: Path) -> Any:
    return json.loads(gzip.decompress(path.read_bytes()))


async def _check(storage: Storage, release: Path) -> None:
    found = await answers(storage)
    # Through JSON as the fixture was, so floats compare exactly.
    assert json.loads(json.dumps(found)) == _expected(release)
    assert all(groups and groups[0]["times_ms"] for groups in found.values())


def test_there_is_a_fixture_of_an_earlier_release() -> None:
    assert RELEASES, "tests/fixtures/upgrade holds no release-* fixture"


@pytest.mark.parametrize("release", RELEASES, ids=lambda p: p.name)
async def test_a_sqlite_file_of_an_earlier_release_answers_the_same(
    release: Path, tmp_path: Path
) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(gzip.decompress((release / "sqlite.db.gz").read_bytes()))
    storage = await open_storage(f"sqlite:///{path}", StorageContext(RETENTION_MS, clock=Clock()))
    try:
        await _check(storage, release)
    finally:
        await storage.close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version FROM schema_version").fetchall() == [
            (SCHEMA_VERSION,)
        ]
        series = connection.execute(
            "SELECT count(DISTINCT labels) FROM series_labels WHERE app = ? AND metric = ?",
            (APP, "latency"),
        ).fetchone()[0]
        assert series == 12  # every series of the metric, indexed on open
        versions = {blob[4] for (blob,) in connection.execute("SELECT distribution FROM partials")}
        assert versions == {1}  # nothing was rewritten


@pytest.mark.parametrize("release", RELEASES, ids=lambda p: p.name)
async def test_a_cassandra_keyspace_of_an_earlier_release_answers_the_same(
    release: Path,
) -> None:
    keyspace = "metaas_upgrade"
    await cassandra_service.drop_keyspace(keyspace)
    url = cassandra_service.url(keyspace)
    # This release's schema, then the rows as the earlier one stored them.
    created = await open_storage(url, StorageContext(RETENTION_MS))
    await created.close()
    tables: dict[str, list[dict[str, Any]]] = _load(release / "cassandra.json.gz")

    def insert() -> None:
        session = cassandra_service.admin()
        for table, rows in tables.items():
            statement = session.prepare(f"INSERT INTO {keyspace}.{table} JSON ?")
            results = execute_concurrent_with_args(
                session, statement, [(json.dumps(row),) for row in rows], concurrency=64
            )
            assert all(ok for ok, _ in results)

    await asyncio.to_thread(insert)
    storage = await open_storage(
        cassandra_service.url(keyspace, schema="none"),
        StorageContext(RETENTION_MS, clock=Clock()),
    )
    try:
        await _check(storage, release)
    finally:
        await storage.close()
        await cassandra_service.drop_keyspace(keyspace)


@pytest.mark.parametrize("release", RELEASES, ids=lambda p: p.name)
async def test_a_dynamodb_table_of_an_earlier_release_answers_the_same(release: Path) -> None:
    url = await dynamodb_service.new_table("upgrade")
    table = url.split("://", 1)[1].split("?", 1)[0]
    items = [
        {
            name: {kind: base64.b64decode(inner) if kind == "B" else inner}
            for name, value in item.items()
            for kind, inner in value.items()
        }
        for item in _load(release / "dynamodb.json.gz")
    ]
    async with dynamodb_service.raw_client() as client:
        for first in range(0, len(items), 25):
            batch = [{"PutRequest": {"Item": item}} for item in items[first : first + 25]]
            response = await client.batch_write_item(RequestItems={table: batch})
            assert not response.get("UnprocessedItems")
    storage = await open_storage(url, StorageContext(RETENTION_MS, clock=Clock()))
    try:
        await _check(storage, release)
    finally:
        await storage.close()
        async with dynamodb_service.raw_client() as client:
            await client.delete_table(TableName=table)


def test_the_fixture_answers_cover_the_planner_s_paths() -> None:
    """The fixture's queries read the whole-metric view, a projection,
    selected series (one, and by a label), hourly rollups and every series:
    each path a change of encoding, index or planner touches."""
    expected = _expected(RELEASES[-1])
    assert [len(expected[name]) for name in sorted(expected)] == [4, 4, 3, 1, 3, 1, 1]
    assert sorted(expected) == [
        "5xx_by_dyno_hourly",
        "by_dyno",
        "by_status",
        "merged",
        "one_dyno_by_status",
        "one_series",
        "signed",
    ]
    hourly = expected["5xx_by_dyno_hourly"][0]["times_ms"]
    assert hourly == [NOW - 2 * 3_600_000, NOW - 3_600_000]
