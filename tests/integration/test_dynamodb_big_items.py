"""Items beyond DynamoDB's 400 KB limit, written and read back over HTTP on
the emulator, compared with the embedded store.

Why a minute's item gets that large: the backend stores one *block* per
(app, metric, minute, writer) holding the distribution of every label set
(docs/dynamodb.md), since a query reads all series of a metric at once and
DynamoDB bills every item write at least one write unit. One series' partial
cannot pass about 33 KB (two stores of at most 2,048 buckets of at most
8-byte counts), but a block grows with the label sets: 1,500 dynos each serving 200
requests a minute (lognormal latencies) encode to about 930 KB, which zstd
or gzip bring to about 230 KB. At 1,000 requests per dyno and minute with a
wider spread the block is about 2 MB, still about 560 KB compressed: it
needs chunks.

The samples go through the real aggregation and flush path (Aggregator,
write_pending: 500 partials per write, so each block is read, merged and
rewritten three times on its way past 400 KB).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from metaas.server.config import CodecConfig
from metaas.server.ingest.aggregator import Aggregator
from metaas.server.ingest.partials import write_pending
from metaas.server.ingest.records import SeriesBatch
from metaas.server.model import Partial, Resolution, SeriesKey
from metaas.server.query.stats import Stat, evaluate_many, parse_stat
from metaas.server.sketch import Distribution
from metaas.server.storage import Storage, StorageContext, codec, open_storage
from metaas.server.storage.dynamodb import schema
from metaas.server.telemetry import Telemetry
from tests.backends import dynamodb
from tests.conformance.conftest import FixedClock

NOW = 1_800_000_000_000
MINUTE = 60_000
FIRST_MINUTE = NOW - 10 * MINUTE
APP, METRIC, WRITER = "bigshop", "router.latency_ms", "0f1e2d3c4b5a6978"
DYNOS = 1500
STATUSES = ("2xx", "3xx", "4xx", "5xx")
STATS: tuple[Stat, ...] = tuple(
    s
    for s in map(
        parse_stat, ["count", "sum", "min", "max", "mean", "p50", "p90", "p99", "p999", "q0.25"]
    )
    if s is not None
)
CASES = [
    pytest.param("zstd", 200, 1.0, False, id="zstd"),
    pytest.param("gzip", 200, 1.0, False, id="gzip"),
    pytest.param("zstd", 1000, 2.0, True, id="zstd-chunked"),
]


def stats_of(distributions: Iterable[Distribution]) -> list[list[float]]:
    """Each distribution's STATS, in order, as the query engine computes them."""
    columns = evaluate_many(STATS, list(distributions))
    return [list(values) for values in zip(*columns, strict=True)]


def dyno_batches(requests_per_minute: int, sigma: float) -> list[SeriesBatch]:
    """Two minutes of router latencies for each dyno of one app."""
    rng = np.random.default_rng(42)
    batches = []
    for dyno in range(1, DYNOS + 1):
        series = SeriesKey.of(
            APP, METRIC, {"dyno": f"web.{dyno}", "status": STATUSES[dyno % len(STATUSES)]}
        )
        count = 2 * requests_per_minute
        times = FIRST_MINUTE + np.sort(rng.integers(0, 2 * MINUTE, count)).astype(np.int64)
        values = rng.lognormal(3.0 + dyno % 3, sigma, count)
        batches.append(SeriesBatch(series, times, values))
    return batches


def stat_table(
    partials: Sequence[Partial], step_ms: int, group_by: tuple[str, ...]
) -> dict[tuple[tuple[str, ...], int], list[float]]:
    """Every stat per (group, step), merging partials in the order the
    backend returned them, as the query engine does."""
    merged: dict[tuple[tuple[str, ...], int], Distribution] = {}
    for partial in partials:
        labels = partial.series.label_map
        group = tuple(labels.get(name, "") for name in group_by)
        bucket = FIRST_MINUTE + (partial.minute_ms - FIRST_MINUTE) // step_ms * step_ms
        if (group, bucket) in merged:
            merged[group, bucket].merge(partial.distribution)
        else:
            merged[group, bucket] = partial.distribution.copy()
    return dict(zip(merged, stats_of(merged.values()), strict=True))


def metric_total(reader: InMemoryMetricReader, name: str) -> float:
    data = reader.get_metrics_data()
    assert data is not None
    return sum(
        point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points  # type: ignore[union-attr]
    )


@pytest.mark.parametrize(("compression", "requests", "sigma", "chunked"), CASES)
async def test_a_minute_over_400_kb_is_stored_within_the_limit_and_reads_back_exactly(
    tmp_path: Path, compression: str, requests: int, sigma: float, chunked: bool
) -> None:
    clock = FixedClock(NOW)
    config = CodecConfig(compression=compression)
    reader = InMemoryMetricReader()
    telemetry = Telemetry(trace.NoOpTracerProvider(), MeterProvider(metric_readers=[reader]))
    url = await dynamodb.new_table("big")
    stores: list[Storage] = [
        await open_storage(url, StorageContext(dynamodb.RETENTION_MS, clock, config, telemetry)),
        await open_storage(
            f"sqlite:///{tmp_path / 'reference.db'}",
            StorageContext(dynamodb.RETENTION_MS, clock, config),
        ),
    ]
    try:
        aggregator = Aggregator(hot_minutes=3)
        aggregator.apply(dyno_batches(requests, sigma))
        pending = aggregator.take_dirty()
        # Two minutes of every dyno, and the hour's rollup of each.
        assert sum(p.resolution is Resolution.MINUTE for p in pending) == 2 * DYNOS
        assert sum(p.resolution is Resolution.HOUR for p in pending) == DYNOS
        for store in stores:
            await write_pending(store, pending, writer=WRITER, epoch=1)

        # As stored: every item within the limit; each block's encoding
        # exceeded 400 KB and carries the codec's marker.
        stored = await dynamodb.scan(dynamodb.table_of(url))
        assert all(schema.item_size(item) <= schema.MAX_ITEM_BYTES for item in stored)
        heads = [item for item in stored if item["pk"]["S"][:2] in ("b#", "h#")]
        assert len(heads) == 3  # two minute blocks, one hourly block
        chunks = sorted(
            (item for item in stored if item["pk"]["S"].startswith("c#")),
            key=lambda item: (item["pk"]["S"], item["sk"]["S"]),
        )
        for head in heads:
            if chunked:
                assert "d" not in head
                assert int(head["cn"]["N"]) >= 2
                mine = [c for c in chunks if head["ch"]["S"] in c["pk"]["S"]]
                data = b"".join(c["d"]["B"] for c in mine)
            else:
                assert "cn" not in head
                data = head["d"]["B"]
            assert data[:3] == b"M\x01" + bytes([codec.codec_for(config)])
            assert len(codec.decode(data)) > 400 * 1024
        assert bool(chunks) is chunked

        # Read back: the same partials, and every stat bit for bit.
        start, end = FIRST_MINUTE - MINUTE, FIRST_MINUTE + 3 * MINUTE
        dynamo, reference = [await s.read_partials(APP, METRIC, start, end) for s in stores]
        assert len(dynamo) == 2 * DYNOS
        assert {(p.key, p.epoch, p.distribution.to_bytes()) for p in dynamo} == {
            (p.key, p.epoch, p.distribution.to_bytes()) for p in reference
        }
        for step in (MINUTE, 2 * MINUTE):
            for group_by in ((), ("status",), ("dyno",), ("status", "dyno")):
                assert stat_table(dynamo, step, group_by) == stat_table(
                    reference, step, group_by
                ), (step, group_by)
        keys = [p.key for p in reference[::97]]
        got = [await s.get_partials(keys) for s in stores]
        assert {k: v.distribution for k, v in got[0].items()} == {
            k: v.distribution for k, v in got[1].items()
        }
        listed = [await s.list_series(APP, start, end) for s in stores]
        assert listed[0] == listed[1]
        assert len(listed[0]) == DYNOS

        saved = metric_total(reader, "metaas.storage.dynamodb.compression.saved_write_units")
        assert saved > 0
        assert metric_total(reader, "metaas.storage.dynamodb.capacity") > 0
        chunked_writes = metric_total(reader, "metaas.storage.dynamodb.chunked_items")
        assert chunked_writes >= 2 if chunked else chunked_writes == 0
    finally:
        for store in stores:
            await store.close()
