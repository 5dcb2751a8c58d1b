from __future__ import annotations

import ast
import asyncio
import json
import math
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format

from metaas.server.api.intake import batches_from_request, write_batch
from metaas.server.api.validation import validate_write
from metaas.server.config import IngestConfig, LimitsConfig
from metaas.server.ingest import legacy, records
from metaas.server.ingest.idempotency import KeyReused, scope_of
from metaas.server.ingest.pipeline import IngestPipeline
from metaas.server.ingest.records import SeriesBatch, WriteBatch
from metaas.server.ingest.wal import (
    WalError,
    WalLocked,
    WriteAheadLog,
    list_segments,
    read_segment,
)
from metaas.server.model import SeriesKey
from metaas.server.storage import StorageContext, open_storage
from metaas.server.telemetry import noop
from metaas.v1 import ingest_pb2
from tests.conformance.conftest import FixedClock

GENERATION = "00112233445566ff"
OTHER = "ffeeddccbbaa9988"


async def test_appends_are_durable_in_order_and_applied_once(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, GENERATION)
    await wal.open(b"head")
    applied: list[int] = []
    results = await asyncio.gather(
        *(wal.append(f"r{i}".encode(), lambda i=i: applied.append(i) or i) for i in range(100))
    )
    await wal.close()
    assert results == list(range(100))
    assert applied == list(range(100))
    (segment,) = list_segments(tmp_path)
    assert list(read_segment(segment.path)) == [b"head"] + [f"r{i}".encode() for i in range(100)]


async def test_rotation_seals_exactly_the_records_applied_before_it(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, GENERATION)
    await wal.open(b"h1")
    applied: list[int] = []
    first = [
        asyncio.create_task(wal.append(b"a", lambda i=i: applied.append(i))) for i in range(10)
    ]
    await asyncio.sleep(0)  # the writer takes the batch
    sealed = await wal.rotate(lambda: b"h2", lambda epoch: (epoch, list(applied)))
    await asyncio.gather(*first)
    await wal.append(b"b", lambda: applied.append(99))
    await wal.close()
    epoch, seen = sealed
    segments = list_segments(tmp_path)
    assert [s.epoch for s in segments] == [1, 2]
    assert epoch == 1
    in_first = list(read_segment(segments[0].path))[1:]
    # The snapshot taken at rotation matches the sealed segment's records.
    assert len(in_first) == len(seen)
    assert next(read_segment(segments[1].path)) == b"h2"


async def test_torn_tail_is_ignored_on_replay(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, GENERATION)
    await wal.open(b"head")
    await wal.append(b"complete", lambda: None)
    await wal.close()
    (segment,) = list_segments(tmp_path)
    with segment.path.open("ab") as file:
        file.write(b"\x10\x00\x00\x00garbage")  # a frame cut short by a crash
    assert list(read_segment(segment.path)) == [b"head", b"complete"]
    data = bytearray(segment.path.read_bytes())
    data[-12] ^= 0xFF  # corrupt a byte of the last complete record
    segment.path.write_bytes(bytes(data))
    assert list(read_segment(segment.path)) == [b"head"]


async def test_cancelled_caller_is_still_applied(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, GENERATION)
    await wal.open(b"head")
    applied: list[str] = []
    task = asyncio.create_task(wal.append(b"x", lambda: applied.append("x")))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wal.close()
    assert applied == ["x"]


async def test_failed_write_leaves_nothing_behind_and_log_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from metaas.server.ingest import wal as wal_module

    wal = WriteAheadLog(tmp_path, GENERATION)
    await wal.open(b"head")
    real = wal_module._write_all

    def half_then_full_disk(fd: int, data: memoryview) -> None:
        real(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(wal_module, "_write_all", half_then_full_disk)
    applied: list[bytes] = []
    with pytest.raises(WalError):
        await wal.append(b"rejected", lambda: applied.append(b"rejected"))
    monkeypatch.setattr(wal_module, "_write_all", real)
    await wal.append(b"accepted", lambda: applied.append(b"accepted"))
    await wal.close()
    assert applied == [b"accepted"]
    (segment,) = list_segments(tmp_path)
    assert list(read_segment(segment.path)) == [b"head", b"accepted"]


async def test_a_second_log_on_a_locked_directory_is_refused_naming_the_holder(
    tmp_path: Path,
) -> None:
    first = WriteAheadLog(tmp_path / "wal", GENERATION)
    await first.open(b"head")
    second = WriteAheadLog(tmp_path / "wal", OTHER)
    with pytest.raises(WalLocked) as refused:
        await second.open(b"other head")
    await second.close()
    assert refused.value.holder_pid == os.getpid()
    assert refused.value.directory == (tmp_path / "wal").resolve()
    assert str(tmp_path / "wal") in str(refused.value)
    assert f"pid={os.getpid()}" in str(refused.value)
    assert [s.generation for s in list_segments(tmp_path / "wal")] == [GENERATION]
    await first.close()  # releases the lock
    third = WriteAheadLog(tmp_path / "wal", OTHER)
    await third.open(b"head")
    await third.close()


async def test_the_lock_of_a_killed_process_is_released(tmp_path: Path) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from metaas.server.ingest.wal import WriteAheadLog\n"
        "async def main():\n"
        f"    await WriteAheadLog(Path(sys.argv[1]), '{OTHER}').acquire()\n"
        "    print('locked', flush=True)\n"
        "    sys.stdin.read()\n"
        "asyncio.run(main())\n",
        str(tmp_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"locked\n"
        wal = WriteAheadLog(tmp_path, GENERATION)
        with pytest.raises(WalLocked) as refused:
            await wal.acquire()
        assert refused.value.holder_pid == holder.pid
        holder.send_signal(signal.SIGKILL)  # no chance to release anything
        await holder.wait()
        await wal.acquire()
        await wal.close()
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def test_a_failed_delete_raises_and_its_bytes_leave_the_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = WriteAheadLog(tmp_path, GENERATION)
    await wal.open(b"head")
    await wal.append(b"x" * 1000, lambda: None)
    await wal.rotate(lambda: b"head", lambda epoch: epoch)
    sealed, current = list_segments(tmp_path)
    assert wal.backlog_bytes > 1000
    unlink = Path.unlink

    def append_only(path: Path, missing_ok: bool = False) -> None:
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(Path, "unlink", append_only)
    with pytest.raises(PermissionError):
        await wal.delete(sealed)
    # Stored everywhere: not a lag of storage any more, only a file left over.
    assert wal.backlog_bytes < 100
    assert wal.undeleted_bytes > 1000
    monkeypatch.setattr(Path, "unlink", unlink)
    await wal.delete(sealed)
    assert wal.undeleted_bytes == 0
    assert list_segments(tmp_path) == [current]
    await wal.close()


async def test_problems_describe_a_failing_rotation_until_it_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = WriteAheadLog(tmp_path, GENERATION)
    await wal.open(b"head")
    real = wal._start_segment

    def full_disk(epoch: int, head: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(wal, "_start_segment", full_disk)
    with pytest.raises(OSError, match="No space"):
        await wal.rotate(lambda: b"head", lambda epoch: epoch)
    assert wal.problems() == [
        "wal: cannot start a new segment for 0 s: OSError: [Errno 28] No space left on device"
    ]
    monkeypatch.setattr(wal, "_start_segment", real)
    await wal.rotate(lambda: b"head", lambda epoch: epoch)
    assert wal.problems() == []
    await wal.close()


# The log's records: ingest's own format, and the logs earlier releases left.

FIXTURES = Path(__file__).parents[2] / "fixtures" / "wal"
RELEASES = sorted(FIXTURES.glob("release-*"))
NOW = 1_800_000_000_000


def described(batches: Sequence[SeriesBatch]) -> list[list[Any]]:
    """Series as plain values, as the fixtures' expected.json has them."""
    return [
        [
            b.series.app,
            b.series.metric,
            [list(label) for label in b.series.labels],
            b.times_ms.tolist(),
            b.values.tolist(),
        ]
        for b in batches
    ]


def series(
    app: str, metric: str, labels: dict[str, str], times: list[int], values: list[float]
) -> SeriesBatch:
    return SeriesBatch(
        SeriesKey.of(app, metric, labels),
        np.array(times, np.int64),
        np.array(values, np.float64),
    )


BATCHES = [
    series("shop", "router.latency_ms", {"dyno": "web.1", "status": "2xx"}, [NOW, NOW + 1], [1, 2]),
    series("shop", "router.latency_ms", {}, [NOW - 5], [-0.0]),
    series("blog", "mém", {"path": "/café", "zone": "ключ"}, [NOW] * 3, [1e289, -1e-300, 7.25]),
]


@pytest.mark.parametrize(
    ("batches", "times_width"),
    [
        (BATCHES, 4),
        # Times 60 days apart take eight bytes each.
        ([*BATCHES, series("a", "m", {}, [NOW - 60 * 86_400_000], [1.0])], 8),
        ([series("a", "m", {"l": "v"}, [-(2**63), 2**63 - 1], [0.5, 1.5])], 8),
        ([], 8),
    ],
    ids=["within 49 days", "wider", "extreme times", "empty"],
)
@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "unkeyed"])
def test_write_records_round_trip(
    batches: list[SeriesBatch], times_width: int, keyed: bool
) -> None:
    samples = sum(b.times_ms.size for b in batches)
    batch = (
        WriteBatch(batches, samples, "clé-1", b"\x01" * 32)
        if keyed
        else WriteBatch(batches, samples)
    )
    scope = scope_of("router-7", ["shop", "blog"]) if keyed else ""
    payload = records.encode_write(records.WriteRecord(NOW, scope, batch))
    assert payload[:2] == bytes((records.VERSION,)) + b"w"
    assert payload[29] == times_width
    decoded = records.decode(payload)
    assert isinstance(decoded, records.WriteRecord)
    assert (decoded.recorded_ms, decoded.scope) == (NOW, scope)
    assert decoded.batch.samples == samples
    assert (decoded.batch.idempotency_key, decoded.batch.fingerprint) == (
        batch.idempotency_key,
        batch.fingerprint,
    )
    assert described(decoded.batch.series) == described(batches)
    assert all(b.times_ms.dtype == np.int64 for b in decoded.batch.series)
    # Restoring keys reads no samples.
    header_only = records.decode(payload, samples=False)
    assert isinstance(header_only, records.WriteRecord)
    assert header_only.batch.series == ()
    assert header_only.batch.samples == samples


def test_a_write_record_takes_twelve_bytes_a_sample() -> None:
    rng = np.random.default_rng(1)
    batches = [
        series("bench", "router.latency_ms", {"dyno": f"web.{d}", "status": "2xx"},
               sorted(rng.integers(NOW - 60_000, NOW, 100).tolist()),
               rng.lognormal(3.0, 0.8, 100).tolist())
        for d in range(100)
    ]  # fmt: skip
    payload = records.encode_write(records.WriteRecord(NOW, "", WriteBatch(batches, 10_000)))
    assert 120_000 < len(payload) < 126_000


def test_keys_records_round_trip() -> None:
    entries = [
        records.KeyEntry("k", scope_of("x", ["a"]), b"\x02" * 32, 3, NOW),
        records.KeyEntry("ключ", records.LEGACY_SCOPE, b"", 1, NOW + 1),
    ]
    payload = records.encode_keys(entries)
    assert payload[:2] == bytes((records.VERSION,)) + b"k"
    assert records.decode(payload) == entries
    assert records.decode(records.encode_keys([])) == []


def test_records_of_no_known_format_are_refused() -> None:
    payload = records.encode_write(records.WriteRecord(NOW, "", WriteBatch(BATCHES, 6)))
    with pytest.raises(ValueError, match="format 3: this release reads formats 0 to 2"):
        records.decode(b"\x03" + payload[1:])
    with pytest.raises(ValueError, match="unknown write-ahead log record kind"):
        records.decode(payload[:1] + b"x" + payload[2:])
    with pytest.raises(ValueError, match="unknown write-ahead log record type"):
        records.decode(b"X" + payload[1:])
    with pytest.raises(ValueError, match="length does not match"):
        records.decode(payload + b"\0")


def test_a_name_holding_nul_is_not_logged() -> None:
    bad = WriteBatch([series("a", "m", {"l": "v\0w"}, [NOW], [1.0])], 1)
    with pytest.raises(ValueError, match="NUL"):
        records.encode_write(records.WriteRecord(NOW, "", bad))


def test_the_request_bytes_of_earlier_formats_read_as_the_generated_code_reads_them() -> None:
    rng = np.random.default_rng(3)
    for case in range(50):
        request = ingest_pb2.WriteRequest(idempotency_key=f"k{case}")
        for s in range(int(rng.integers(0, 4))):
            samples = int(rng.integers(0, 40))
            times = rng.integers(-(2**63), 2**63 - 1, samples, dtype=np.int64)
            if case % 2:
                times = NOW + rng.integers(-(10**6), 10**6, samples)
            labels = {f"l{i}": f"v{i}é" for i in range(int(rng.integers(0, 3)))}
            request.series.append(
                ingest_pb2.SeriesSamples(
                    app=f"app{s}",
                    metric="m" * s,
                    labels=labels,
                    times_ms=times.tolist(),
                    values=rng.normal(0, 1e6, samples).tolist(),
                )
            )
        body = request.SerializeToString(deterministic=bool(case % 3))
        found = [SeriesBatch(*part) for part in legacy.request_series(body)]
        assert described(found) == described(batches_from_request(request))
    with pytest.raises(ValueError, match="cut short"):
        legacy.request_series(request.SerializeToString()[:-1])


def test_ingest_imports_nothing_of_the_public_proto() -> None:
    """The proto ends at the API edge (api/intake.py), so changing it never
    changes the log."""
    package = Path(records.__file__).parent
    for module in package.glob("*.py"):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert not [n for n in names if n.startswith(("metaas.v1", "google.protobuf"))], module


def expected(release: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((release / "expected.json").read_text(encoding="utf-8"))
    return loaded


@pytest.mark.parametrize("release", RELEASES, ids=[r.name for r in RELEASES])
def test_an_earlier_release_s_log_reads_back_the_same(release: Path) -> None:
    """Every record of the segments that release wrote, as it read them."""
    segments = expected(release)["segments"]
    assert segments
    for name, wanted in segments.items():
        found = [records.decode(payload) for payload in read_segment(release / name)]
        assert len(found) == len(wanted)
        for record, want in zip(found, wanted, strict=True):
            if want["kind"] == "keys":
                assert isinstance(record, list)
                assert [
                    [e.key, e.scope, e.fingerprint.hex(), e.accepted, e.expires_ms] for e in record
                ] == want["keys"]
                continue
            assert isinstance(record, records.WriteRecord)
            batch = record.batch
            assert [
                record.recorded_ms,
                batch.samples,
                batch.idempotency_key,
                record.scope,
                batch.fingerprint.hex(),
            ] == [want[k] for k in ("recorded_ms", "accepted", "key", "scope", "fingerprint")]
            assert described(batch.series) == want["series"]


@pytest.mark.parametrize("release", RELEASES, ids=[r.name for r in RELEASES])
async def test_an_earlier_release_s_log_replays_with_its_samples_and_keys(
    release: Path, tmp_path: Path
) -> None:
    """Started on that log, this release stores every sample once, and
    answers a retry of each keyed request as that release did."""
    fixture = expected(release)
    clock = FixedClock(fixture["now_ms"])
    wal = tmp_path / "wal"
    wal.mkdir()
    for name in fixture["segments"]:
        shutil.copyfile(release / name, wal / name)
    storage = await open_storage(
        f"sqlite:///{tmp_path / 'db.sqlite'}", StorageContext(fixture["retention_ms"], clock=clock)
    )
    config = IngestConfig(
        wal_dir=wal,
        flush_interval_s=3600,
        hot_minutes=3,
        idempotency_window_s=fixture["window_s"],
    )
    p = IngestPipeline(
        config,
        retention_ms=fixture["retention_ms"],
        storage=storage,
        clock=clock,
        telemetry=noop(),
    )
    await p.start()
    sent = [item for item in fixture["requests"] if item is not None]
    keyed = 0
    for (caller, body), answer in zip(sent, fixture["answers"], strict=True):
        request = json_format.ParseDict(body, ingest_pb2.WriteRequest())
        if not request.idempotency_key:
            continue
        keyed += 1
        batches, accepted = validate_write(
            request, now_ms=clock.now, retention_ms=fixture["retention_ms"], limits=LimitsConfig()
        )
        assert await p.write(write_batch(request, batches, accepted), caller=caller) == answer
        request.series[0].values[0] += 1  # another body under the same key
        batches, accepted = validate_write(
            request, now_ms=clock.now, retention_ms=fixture["retention_ms"], limits=LimitsConfig()
        )
        with pytest.raises(KeyReused):
            await p.write(write_batch(request, batches, accepted), caller=caller)
    assert keyed >= 3
    await p.stop()
    # The release's segments are stored and gone; only this run's open one is left.
    assert [s.generation for s in list_segments(wal)] == [p.generation]

    logged: dict[SeriesKey, list[float]] = {}
    for wanted in fixture["segments"].values():
        for record in wanted:
            for app, metric, labels, _, values in record.get("series", []):
                labelled = tuple((name, value) for name, value in labels)
                logged.setdefault(SeriesKey(app, metric, labelled), []).extend(values)
    for key, values in logged.items():
        stored = [
            partial.distribution
            for partial in await storage.read_partials(key.app, key.metric, 0, clock.now)
            if partial.series == key
        ]
        assert sum(d.count for d in stored) == len(values)
        assert math.isclose(sum(d.sum for d in stored), math.fsum(values), rel_tol=1e-12)
        assert min(d.min for d in stored) == min(values)
        assert max(d.max for d in stored) == max(values)
    await storage.close()
