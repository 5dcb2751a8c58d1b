"""The DynamoDB backend against the emulator over HTTP: schema, URL options,
retries of unprocessed items, error translation, concurrency, TTL, and
readers never meeting half-written chunked items."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from botocore.exceptions import ClientError
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from metaas.server.config import ConfigError
from metaas.server.model import Partial, SeriesKey
from metaas.server.sketch import Distribution
from metaas.server.storage import (
    Invalid,
    Storage,
    StorageContext,
    StorageError,
    Throttled,
    Unavailable,
    apply_schema,
    open_storage,
)
from metaas.server.storage.dynamodb import DynamoConfig, DynamoStorage, schema
from metaas.server.storage.dynamodb.calls import translated
from metaas.server.telemetry import Telemetry
from tests.backends import dynamodb
from tests.conformance.conftest import FixedClock, backend_of
from tests.support import free_port

NOW = 1_800_000_000_000
MINUTE = 60_000
BASE = NOW - 30 * MINUTE


def partial(
    minute: int, *values: float, dyno: str = "web.1", writer: str = "w1", epoch: int = 1
) -> Partial:
    series = SeriesKey.of("shop", "latency", {"dyno": dyno})
    return Partial(series, minute, writer, epoch, Distribution.from_values(np.array(values)))


def inner(storage: Storage) -> DynamoStorage:
    return cast(DynamoStorage, backend_of(storage))


def client_of(storage: Storage) -> Any:
    calls = inner(storage)._calls
    assert calls is not None
    return calls._client


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def metrics() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
async def storage(
    tmp_path: Path, clock: FixedClock, metrics: InMemoryMetricReader
) -> AsyncIterator[Storage]:
    telemetry = Telemetry(TracerProvider(), MeterProvider(metric_readers=[metrics]))
    opened = await dynamodb.open_clean(tmp_path, clock, telemetry=telemetry)
    try:
        yield opened
    finally:
        await opened.close()


def counted(reader: InMemoryMetricReader, name: str, **attributes: str) -> float:
    data = reader.get_metrics_data()
    total = 0.0
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    if all(point.attributes.get(k) == v for k, v in attributes.items()):  # type: ignore[union-attr]
                        total += point.value  # type: ignore[union-attr]
    return total


async def test_schema_apply_creates_an_on_demand_table_with_ttl_and_can_rerun() -> None:
    dynamodb.use_test_credentials()
    table = f"schema-apply-{uuid.uuid4().hex[:12]}"
    url = dynamodb.table_url(table)
    first = await apply_schema(url, StorageContext(dynamodb.RETENTION_MS))
    assert "created (on-demand billing)" in first
    assert "TTL enabled on 'ttl'" in first
    again = await apply_schema(url, StorageContext(dynamodb.RETENTION_MS))
    assert again == f"dynamodb table {table}: already current"
    async with dynamodb.raw_client() as client:
        described = (await client.describe_table(TableName=table))["Table"]
        ttl = await client.describe_time_to_live(TableName=table)
        await client.delete_table(TableName=table)
    assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert {(k["AttributeName"], k["KeyType"]) for k in described["KeySchema"]} == {
        ("pk", "HASH"),
        ("sk", "RANGE"),
    }
    assert ttl["TimeToLiveDescription"] == {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}


async def test_opening_a_missing_table_fails_fast_naming_the_fix() -> None:
    dynamodb.use_test_credentials()
    with pytest.raises(ConfigError, match="metaas schema apply"):
        await open_storage(dynamodb.table_url("no-such-table"), StorageContext(1))


async def test_a_missing_region_names_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dynamodb.use_test_credentials()
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match=r"\?region="):
        await open_storage("dynamodb://no-region", StorageContext(1))


async def test_unreachable_endpoint_is_a_retryable_unavailable_error() -> None:
    dynamodb.use_test_credentials()
    url = (
        f"dynamodb://t-unreachable?endpoint=http://127.0.0.1:{free_port()}&region=us-east-1"
        "&connect_timeout_s=0.2&max_attempts=1"
    )
    with pytest.raises(Unavailable) as caught:
        await open_storage(url, StorageContext(1))
    assert caught.value.is_retryable


def test_url_options_parse_into_the_client_settings() -> None:
    config = DynamoConfig.from_url(
        "dynamodb://metrics?endpoint=http://127.0.0.1:8000&region=eu-west-1"
        "&max_pool_connections=200&read_timeout_s=2.5&retry_mode=adaptive&tcp_keepalive=false"
        "&consistent_queries=false"
    )
    assert not config.consistent_queries
    assert (config.table, config.endpoint, config.region) == (
        "metrics",
        "http://127.0.0.1:8000",
        "eu-west-1",
    )
    options = config.client_options()
    assert options["max_pool_connections"] == 200
    assert options["read_timeout"] == 2.5
    assert options["retries"] == {"mode": "adaptive", "max_attempts": 4}
    assert options["tcp_keepalive"] is False
    assert options["connector_args"] == {"keepalive_timeout": 15.0}
    assert DynamoConfig.from_url("dynamodb://metrics").endpoint is None


@pytest.mark.parametrize(
    ("url", "setting"),
    [
        ("dynamodb://ab", "dynamodb table"),
        ("dynamodb://", "storage"),
        ("dynamodb://t1x/path", "storage"),
        ("dynamodb://t1x?endpoint=localhost:8000", "dynamodb endpoint"),
        ("dynamodb://t1x?region=Mars", "dynamodb region"),
        ("dynamodb://t1x?pool=5", "dynamodb storage option"),
        ("dynamodb://t1x?max_pool_connections=0", "dynamodb max_pool_connections"),
        ("dynamodb://t1x?read_timeout_s=soon", "dynamodb read_timeout_s"),
        ("dynamodb://t1x?connect_timeout_s=nan", "dynamodb connect_timeout_s"),
        ("dynamodb://t1x?retry_mode=eager", "dynamodb retry_mode"),
        ("dynamodb://t1x?tcp_keepalive=maybe", "dynamodb tcp_keepalive"),
    ],
)
def test_bad_urls_name_the_setting_and_what_it_accepts(url: str, setting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        DynamoConfig.from_url(url)
    assert caught.value.setting == setting
    assert "expected" in str(caught.value)


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("ProvisionedThroughputExceededException", 400, Throttled),
        ("ThrottlingException", 400, Throttled),
        ("RequestLimitExceeded", 400, Throttled),
        ("InternalServerError", 500, Unavailable),
        ("ServiceUnavailable", 503, Unavailable),
        ("ValidationException", 400, Invalid),
        ("ResourceNotFoundException", 400, Invalid),
    ],
)
def test_driver_errors_become_domain_errors(code: str, status: int, kind: type) -> None:
    error = ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "BatchWriteItem",
    )
    with pytest.raises(StorageError) as raised, translated:
        raise error
    assert type(raised.value) is kind
    assert raised.value.backend == "dynamodb"
    assert code in str(raised.value)


async def test_unprocessed_items_are_retried_until_applied(
    storage: Storage, metrics: InMemoryMetricReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_of(storage)
    real = client.batch_write_item
    rounds = 0

    async def half_processed(**request: Any) -> Any:
        """Apply the first half of each request; hand back the rest."""
        nonlocal rounds
        rounds += 1
        ((table, writes),) = request["RequestItems"].items()
        keep = max(1, len(writes) // 2)
        reply = await real(**{**request, "RequestItems": {table: writes[:keep]}})
        reply["UnprocessedItems"] = {table: writes[keep:]} if writes[keep:] else {}
        return reply

    monkeypatch.setattr(client, "batch_write_item", half_processed)
    written = [partial(BASE + (i % 5) * MINUTE, float(i), dyno=f"web.{i}") for i in range(40)]
    await storage.write_partials(written)
    monkeypatch.undo()
    read = await storage.read_partials("shop", "latency", BASE, NOW)
    assert {(p.key, p.distribution.sum) for p in read} == {
        (p.key, p.distribution.sum) for p in written
    }
    assert rounds > 2
    assert (
        counted(
            metrics, "metaas.storage.dynamodb.unprocessed", **{"db.operation": "BatchWriteItem"}
        )
        > 0
    )


async def test_items_never_processed_fail_the_write_as_throttled(
    clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = await dynamodb.new_table(batch_attempts="3")
    storage = await open_storage(url, StorageContext(dynamodb.RETENTION_MS, clock=clock))
    try:
        client = client_of(storage)

        async def nothing_processed(**request: Any) -> Any:
            return {"UnprocessedItems": request["RequestItems"], "ConsumedCapacity": []}

        monkeypatch.setattr(client, "batch_write_item", nothing_processed)
        with pytest.raises(Throttled, match="unprocessed after 3") as caught:
            await storage.write_partials([partial(BASE, 1.0)])
        assert caught.value.is_retryable
    finally:
        await storage.close()


async def test_unprocessed_keys_are_retried_on_reads(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = [partial(BASE + i * MINUTE, float(i)) for i in range(30)]
    await storage.write_partials(written)
    client = client_of(storage)
    real = client.batch_get_item

    async def half_served(**request: Any) -> Any:
        ((table, spec),) = request["RequestItems"].items()
        keys = spec["Keys"]
        keep = max(1, len(keys) // 2)
        reply = await real(**{**request, "RequestItems": {table: {**spec, "Keys": keys[:keep]}}})
        reply["UnprocessedKeys"] = {table: {**spec, "Keys": keys[keep:]}} if keys[keep:] else {}
        return reply

    monkeypatch.setattr(client, "batch_get_item", half_served)
    found = await storage.get_partials([p.key for p in written])
    assert {k: v.distribution.sum for k, v in found.items()} == {
        p.key: p.distribution.sum for p in written
    }


async def test_cancellation_is_not_blamed_on_storage(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = asyncio.Event()

    async def hang(**_: Any) -> Any:
        started.set()
        await asyncio.sleep(3600)

    monkeypatch.setattr(client_of(storage), "query", hang)
    task = asyncio.create_task(storage.read_partials("shop", "latency", BASE, NOW))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_concurrent_writes_to_one_block_lose_nothing(storage: Storage) -> None:
    """Writes of different series to the same (metric, minute, writer) item
    merge one after the other; none overwrites another's series."""
    writes = [[partial(BASE, float(i), dyno=f"web.{i}")] for i in range(20)]
    await asyncio.gather(*(storage.write_partials(w) for w in writes))
    read = await storage.read_partials("shop", "latency", BASE, BASE + MINUTE)
    assert sorted(p.distribution.sum for p in read) == [float(i) for i in range(20)]
    assert len(inner(storage)._locks) == 0


async def test_unchanged_rewrites_cost_no_writes(
    storage: Storage, metrics: InMemoryMetricReader
) -> None:
    written = [partial(BASE + i * MINUTE, 1.0, 2.0) for i in range(3)]
    await storage.write_partials(written)
    before = counted(
        metrics, "metaas.storage.dynamodb.capacity", **{"db.operation": "BatchWriteItem"}
    )
    await storage.write_partials(written)
    after = counted(
        metrics, "metaas.storage.dynamodb.capacity", **{"db.operation": "BatchWriteItem"}
    )
    assert before > 0
    assert after == before
    assert (
        counted(metrics, "metaas.storage.dynamodb.capacity", **{"db.operation": "BatchGetItem"}) > 0
    )


async def test_items_expire_with_the_retention(storage: Storage) -> None:
    await storage.write_partials([partial(BASE, 1.0)])
    stored = await dynamodb.scan(inner(storage).config.table)
    ttl = {item["pk"]["S"][0]: int(item["ttl"]["N"]) for item in stored}
    assert ttl["b"] == math.ceil((BASE + dynamodb.RETENTION_MS) / 1000)
    last_minute_of_hour = schema.hour_of(BASE) + 59 * MINUTE
    assert ttl["s"] == math.ceil((last_minute_of_hour + dynamodb.RETENTION_MS) / 1000)


async def test_keys_the_table_cannot_address_are_refused(storage: Storage) -> None:
    with pytest.raises(Invalid, match="may not contain"):
        await storage.write_partials([partial(BASE, 1.0, writer="w#1")])
    with pytest.raises(Invalid, match="minute boundary"):
        await storage.write_partials([partial(BASE + 1, 1.0)])
    assert await storage.read_partials("sh#op", "latency", BASE, NOW) == []


async def test_a_span_per_call_names_dynamodb(tmp_path: Path, clock: FixedClock) -> None:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry = Telemetry(tracer_provider, MeterProvider())
    storage = await dynamodb.open_clean(tmp_path, clock, telemetry=telemetry)
    try:
        await storage.write_partials([partial(BASE, 1.0)])
        await storage.read_partials("shop", "latency", BASE, NOW)
    finally:
        await storage.close()
    attributes = [dict(s.attributes or {}) for s in spans.get_finished_spans()]
    assert {"db.system": "dynamodb", "db.operation": "write_partials"}.items() <= attributes[
        0
    ].items()
    assert attributes[1]["db.operation"] == "read_partials"


async def test_closed_storage_refuses_calls(tmp_path: Path, clock: FixedClock) -> None:
    storage = await dynamodb.open_clean(tmp_path, clock)
    await storage.close()
    with pytest.raises(Unavailable, match="not open"):
        await storage.read_partials("shop", "latency", BASE, NOW)


def bulky(count: int, epoch: int, seed: int) -> list[Partial]:
    """Series whose labels are long random tokens: about 2 KB each that no
    codec can shrink much, so a few hundred make a chunked item."""
    rng = np.random.default_rng(seed)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))
    return [
        Partial(
            SeriesKey.of(
                "shop",
                "latency",
                {f"tag{t}": "".join(rng.choice(alphabet, 250)) for t in range(8)},
            ),
            BASE,
            "w1",
            epoch,
            Distribution.from_values(rng.lognormal(3, 1, 50)),
        )
        for _ in range(count)
    ]


async def test_a_reader_follows_a_replaced_head_to_its_new_chunks(
    tmp_path: Path, clock: FixedClock
) -> None:
    """A reader holding a head whose chunks were replaced and deleted since
    reads the head again instead of returning a half item."""
    storage = await dynamodb.open_clean(tmp_path, clock)
    try:
        await storage.write_partials(bulky(300, 1, seed=1))
        table = inner(storage).config.table
        old_head = next(i for i in await dynamodb.scan(table) if i["pk"]["S"].startswith("b#"))
        assert "cn" in old_head
        replacement = bulky(300, 2, seed=2)
        await storage.write_partials(replacement)
        key = (old_head["pk"]["S"], old_head["sk"]["S"])
        loaded = await inner(storage)._load({key: old_head})
        assert loaded[key][0]["ch"] != old_head["ch"]
        read = await storage.read_partials("shop", "latency", BASE, NOW)
        assert len(read) == 600
        assert {p.series: p.distribution for p in read if p.epoch == 2} == {
            p.series: p.distribution for p in replacement
        }
        # The replaced chunks are gone; only the current ones remain. (The
        # catalog of these labels is chunked too.)
        chunks = [i for i in await dynamodb.scan(table) if i["pk"]["S"].startswith("c#b#")]
        assert {c["pk"]["S"] for c in chunks} == {
            schema.chunk_pk(key[0], key[1], loaded[key][0]["ch"]["S"])
        }
    finally:
        await storage.close()


async def test_readers_racing_rewrites_see_whole_items_only(
    tmp_path: Path, clock: FixedClock
) -> None:
    """Readers running alongside rewrites of a chunked item each see one
    whole version, never a mix."""
    storage = await dynamodb.open_clean(tmp_path, clock)
    try:
        series = [p.series for p in bulky(400, 1, seed=3)]
        rng = np.random.default_rng(4)
        versions = [
            [
                Partial(s, BASE, "w1", epoch, Distribution.from_values(rng.lognormal(3, 1, 20)))
                for s in series
            ]
            for epoch in (1, 2, 3, 4)
        ]
        await storage.write_partials(versions[0])
        table = inner(storage).config.table
        assert any("cn" in i for i in await dynamodb.scan(table) if i["pk"]["S"].startswith("b#"))
        expected = {v[0].epoch: {p.series: p.distribution for p in v} for v in versions}

        async def rewrite() -> None:
            for version in versions[1:]:
                await storage.write_partials(version)

        async def read() -> set[int]:
            seen = set()
            for _ in range(6):
                read = await storage.read_partials("shop", "latency", BASE, NOW)
                (epoch,) = {p.epoch for p in read}
                assert {p.series: p.distribution for p in read} == expected[epoch]
                seen.add(epoch)
            return seen

        results = await asyncio.gather(rewrite(), read(), read())
        assert results[1] | results[2] <= {1, 2, 3, 4}
    finally:
        await storage.close()
