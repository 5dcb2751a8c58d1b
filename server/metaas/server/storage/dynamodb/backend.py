"""DynamoDB backend on aioboto3: one client per process, opened once, shared
by every call and closed on close(). Table layout: schema.py; item payloads
and chunking: items.py; decoding: convert.py; requests, retries and errors:
calls.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar

import aioboto3
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import NoRegionError

from metaas.server.config import ConfigError
from metaas.server.model import (
    DAY_MS,
    MINUTE_MS,
    Labels,
    Partial,
    PartialKey,
    Resolution,
    SeriesKey,
    decode_labels,
    matches,
)
from metaas.server.storage import codec
from metaas.server.storage.concurrency import gather_or_cancel
from metaas.server.storage.context import StorageContext
from metaas.server.storage.dynamodb import convert, items, schema
from metaas.server.storage.dynamodb.calls import NAME, Calls, Key, key_of, translated
from metaas.server.storage.dynamodb.config import DynamoConfig
from metaas.server.storage.dynamodb.locks import KeyedLocks
from metaas.server.storage.errors import Invalid, StorageError, Unavailable

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

    from metaas.server.storage.dynamodb.items import Item

log = logging.getLogger(__name__)
_T = TypeVar("_T")
# CPU work on at least this many bytes (decode, merge, compress) runs on a thread.
_THREAD_ABOVE: Final = 64 * 1024
# Times a reader re-reads a head whose chunks were replaced while it read them.
_TORN_RETRIES: Final = 3


@dataclass(frozen=True, slots=True)
class _Plan:
    """One item to (re)write, and the chunks of its previous version."""

    layout: items.Layout
    stale_chunks: list[Key]


class DynamoStorage:
    """Implements :class:`metaas.server.storage.base.Storage` on one table."""

    def __init__(self, config: DynamoConfig, context: StorageContext) -> None:
        self._config = config
        self._retention_ms = context.retention_ms
        self._codec = context.codec
        self._meter = context.telemetry.meter
        self._stack = contextlib.AsyncExitStack()
        self._calls: Calls | None = None
        self._locks = KeyedLocks()
        self._saved_bytes = self._meter.create_counter(
            "metaas.storage.dynamodb.compression.saved_bytes",
            unit="By",
            description="Item bytes not written thanks to compression",
        )
        self._saved_units = self._meter.create_counter(
            "metaas.storage.dynamodb.compression.saved_write_units",
            unit="{write_capacity_unit}",
            description="Write capacity units (1 per KB per item) saved by compression",
        )
        self._chunked = self._meter.create_counter(
            "metaas.storage.dynamodb.chunked_items",
            unit="{item}",
            description="Items written as chunks because they exceeded 400 KB compressed",
        )

    @property
    def name(self) -> str:
        return NAME

    @property
    def config(self) -> DynamoConfig:
        return self._config

    async def open(self, *, check_table: bool = True) -> DynamoDBClient:
        """Create the client; unless ``check_table`` is False, fail fast when
        the table is missing or has other keys."""
        config = self._config
        core = get_session()
        session = aioboto3.Session(botocore_session=core)
        try:
            try:
                client = await self._stack.enter_async_context(
                    session.client(
                        "dynamodb",
                        endpoint_url=config.endpoint,
                        region_name=config.region,
                        config=AioConfig(**config.client_options()),
                    )
                )
            except NoRegionError:
                raise ConfigError(
                    "dynamodb region", None, "?region= in the storage URL, or AWS_REGION"
                ) from None
            # The SDK finds no credentials only at the first request, and then
            # says "Unable to locate credentials" without saying where to set them.
            if await core.get_credentials() is None:
                raise config.missing_credentials()
            if check_table:
                with translated:
                    keys = await schema.describe_keys(client, config.table)
                if keys is None:
                    raise ConfigError(
                        "dynamodb table",
                        config.table,
                        "an existing table: create it with `metaas schema apply --storage URL`",
                    )
                schema.check_keys(config.table, keys)
        except BaseException:
            await self._stack.aclose()
            raise
        self._calls = Calls(client, config, self._meter)
        return client

    async def close(self) -> None:
        self._calls = None
        await self._stack.aclose()

    async def write_partials(self, partials: Sequence[Partial]) -> None:
        if not partials:
            return
        calls = self._require()
        blocks: dict[Key, items.BlockEntries] = {}
        catalogs: dict[Key, items.CatalogEntries] = {}
        expiry: dict[Key, int] = {}
        for partial in partials:
            _check_writable(partial)
            series, minute = partial.series, partial.minute_ms
            day, hour = schema.day_of(minute), schema.hour_of(minute)
            block = _block_key(
                series.app, series.metric, minute, partial.writer, partial.resolution
            )
            blocks.setdefault(block, {})[series.labels_key] = (
                partial.epoch,
                codec.distribution_bytes(partial.distribution, self._codec),
            )
            expiry[block] = schema.expires_at_s(partial.last_minute_ms, self._retention_ms)
            if partial.resolution is Resolution.HOUR:
                continue  # the catalog lists series by minute
            catalog = (
                schema.catalog_pk(series.app, day),
                schema.catalog_sk(hour, series.metric, partial.writer),
            )
            masks = catalogs.setdefault(catalog, {})
            bit = 1 << ((minute - hour) // MINUTE_MS)
            masks[series.labels_key] = masks.get(series.labels_key, 0) | bit
            last_minute = Resolution.HOUR.last_minute(hour)
            expiry[catalog] = schema.expires_at_s(last_minute, self._retention_ms)
        async with self._locks.hold([*blocks, *catalogs]):
            # Consistent reads: the merge must start from this process's last write.
            stored = await self._load(await calls.get([*blocks, *catalogs], consistent=True))
            size = sum(len(data) for _, data in stored.values()) + sum(
                len(d) for entries in blocks.values() for _, d in entries.values()
            )
            plans = await _cpu(size, self._plan, blocks, catalogs, stored, expiry)
            await self._store(calls, plans)

    def _plan(
        self,
        blocks: Mapping[Key, items.BlockEntries],
        catalogs: Mapping[Key, items.CatalogEntries],
        stored: Mapping[Key, tuple[Item, bytes]],
        expiry: Mapping[Key, int],
    ) -> list[_Plan]:
        """Merge new entries into what is stored; encode what changed."""
        plans = []
        for key, entries in blocks.items():
            old = stored.get(key)
            current = convert.block_entries(old[1]) if old else {}
            merged = {**current, **entries}
            if merged != current:
                plans.append(self._plan_item(key, items.encode_block(merged), expiry[key], old))
        for key, masks in catalogs.items():
            old = stored.get(key)
            known = convert.catalog_entries(old[1]) if old else {}
            union = dict(known)
            for labels, mask in masks.items():
                union[labels] = union.get(labels, 0) | mask
            if union != known:
                plans.append(self._plan_item(key, items.encode_catalog(union), expiry[key], old))
        return plans

    def _plan_item(
        self, key: Key, payload: bytes, expires_s: int, old: tuple[Item, bytes] | None
    ) -> _Plan:
        pk, sk = key
        encoded = codec.encode(payload, items.codec_config_for(pk, sk, self._codec))
        layout = items.layout(pk, sk, expires_s, encoded)
        stale: list[Key] = []
        if old is not None:
            replaced = {key_of(k) for k in items.chunk_keys(old[0])}
            stale = sorted(replaced - {key_of(c) for c in layout.chunks})
        return _Plan(layout, stale)

    async def _store(self, calls: Calls, plans: list[_Plan]) -> None:
        """Chunks first, then the heads naming them (so no reader meets a
        head without its chunks), then delete the chunks heads no longer name."""
        chunks = [chunk for plan in plans for chunk in plan.layout.chunks]
        if chunks:
            await calls.write(
                [{"PutRequest": {"Item": c}} for c in chunks], [schema.item_size(c) for c in chunks]
            )
        heads = [plan.layout.head for plan in plans]
        await calls.write(
            [{"PutRequest": {"Item": h}} for h in heads], [schema.item_size(h) for h in heads]
        )
        for plan in plans:
            self._account(plan.layout)
        stale = [key for plan in plans for key in plan.stale_chunks]
        if stale:
            try:
                await calls.write(
                    [{"DeleteRequest": {"Key": items.head_key(pk, sk)}} for pk, sk in stale],
                    [len(pk) + len(sk) for pk, sk in stale],
                )
            except StorageError as error:
                # Unreferenced chunks are harmless and expire with their TTL.
                log.warning("could not delete %d replaced chunks: %s", len(stale), error)

    def _account(self, layout: items.Layout) -> None:
        if layout.chunks:
            self._chunked.add(1)
        if layout.encoded.codec is codec.Codec.NONE:
            return
        attributes = {"codec": layout.encoded.codec.name.lower()}
        self._saved_bytes.add(max(0, layout.saved_bytes), attributes)
        units = max(0, layout.uncompressed_write_units - layout.write_units)
        self._saved_units.add(units, attributes)

    async def read_partials(
        self,
        app: str,
        metric: str,
        start_ms: int,
        end_ms: int,
        resolution: Resolution = Resolution.MINUTE,
        series: Collection[SeriesKey] | None = None,
    ) -> Sequence[Partial]:
        if start_ms >= end_ms or schema.SEP in app or (series is not None and not series):
            return []
        calls = self._require()
        low, high = schema.sort_range(start_ms, end_ms - 1)
        partition = schema.hourly_pk if resolution is Resolution.HOUR else schema.block_pk
        pages = await gather_or_cancel(
            calls.query(partition(app, metric, day), low, high) for day in _days(start_ms, end_ms)
        )
        heads = {key_of(item): item for page in pages for item in page}
        stored = await self._load(heads)
        size = sum(len(data) for _, data in stored.values())
        # A block holds every series of its minute: the read is one query per
        # day whatever is selected, and only the selected series are decoded.
        labels = None if series is None else {s.labels_key for s in series}
        return await _cpu(size, convert.partials_of, app, metric, stored, resolution, labels)

    async def get_partials(self, keys: Sequence[PartialKey]) -> Mapping[PartialKey, Partial]:
        wanted: dict[Key, list[PartialKey]] = {}
        for key in keys:
            if not _addressable(key.series.app, key.writer):
                continue
            block = _block_key(
                key.series.app, key.series.metric, key.minute_ms, key.writer, key.resolution
            )
            wanted.setdefault(block, []).append(key)
        if not wanted:
            return {}
        calls = self._require()
        # Consistent: the flusher merges deltas into what it read here.
        stored = await self._load(await calls.get(list(wanted), consistent=True))
        size = sum(len(data) for _, data in stored.values())
        return await _cpu(size, convert.pick, wanted, stored)

    async def list_series(
        self, app: str, start_ms: int, end_ms: int, metric: str | None = None
    ) -> Sequence[SeriesKey]:
        if start_ms >= end_ms or schema.SEP in app:
            return []
        calls = self._require()
        last_ms = end_ms - 1
        low, high = schema.sort_range(schema.hour_of(start_ms), schema.hour_of(last_ms))
        pages = await gather_or_cancel(
            calls.query(schema.catalog_pk(app, day), low, high) for day in _days(start_ms, end_ms)
        )
        heads = {
            key_of(item): item
            for page in pages
            for item in page
            if metric is None or schema.parse_catalog_sk(key_of(item)[1])[1] == metric
        }
        stored = await self._load(heads)
        size = sum(len(data) for _, data in stored.values())
        found = await _cpu(size, convert.series_in, stored, start_ms, last_ms)
        return [SeriesKey(app, m, decode_labels(labels)) for m, labels in sorted(found)]

    async def find_series(
        self, app: str, metric: str, start_ms: int, end_ms: int, matchers: Labels
    ) -> Sequence[SeriesKey]:
        # The catalog lists the metric's series per writer and hour: one query
        # per day of the range, no distribution read.
        listed = await self.list_series(app, start_ms, end_ms, metric)
        return [series for series in listed if matches(series.labels, matchers)]

    async def _load(self, heads: Mapping[Key, Item]) -> dict[Key, tuple[Item, bytes]]:
        """Each head with its encoded payload, its chunks fetched. A head
        replaced (and its chunks deleted) while being read is read again."""
        calls = self._require()
        loaded: dict[Key, tuple[Item, bytes]] = {}
        pending = dict(heads)
        for _ in range(_TORN_RETRIES + 1):
            wanted = [key_of(k) for head in pending.values() for k in items.chunk_keys(head)]
            chunks = await calls.get(wanted, consistent=True) if wanted else {}
            torn = []
            for key, head in pending.items():
                data = items.assemble(head, chunks)
                if data is None:
                    torn.append(key)
                else:
                    loaded[key] = (head, data)
            if not torn:
                return loaded
            pending = await calls.get(torn, consistent=True)
        raise Unavailable(f"{len(pending)} chunked items kept changing while read", backend=NAME)

    def _require(self) -> Calls:
        if self._calls is None:
            raise Unavailable("storage is not open", backend=NAME)
        return self._calls


def _check_writable(partial: Partial) -> None:
    if not _addressable(partial.series.app, partial.writer):
        raise Invalid(f"app and writer may not contain {schema.SEP!r}", backend=NAME)
    if partial.minute_ms < 0 or partial.minute_ms % partial.resolution:
        unit = "an hour" if partial.resolution is Resolution.HOUR else "a minute"
        raise Invalid(f"minute_ms {partial.minute_ms} is not {unit} boundary", backend=NAME)


def _block_key(app: str, metric: str, start_ms: int, writer: str, resolution: Resolution) -> Key:
    partition = schema.hourly_pk if resolution is Resolution.HOUR else schema.block_pk
    return partition(app, metric, schema.day_of(start_ms)), schema.block_sk(start_ms, writer)


def _addressable(app: str, writer: str) -> bool:
    return schema.SEP not in app and schema.SEP not in writer


def _days(start_ms: int, end_ms: int) -> Iterable[int]:
    return range(schema.day_of(start_ms), schema.day_of(end_ms - 1) + 1, DAY_MS)


async def _cpu(size: int, function: Callable[..., _T], *args: object) -> _T:
    """Run ``function`` on a thread when it works on enough bytes to stall
    the event loop, inline otherwise."""
    if size >= _THREAD_ABOVE:
        return await asyncio.to_thread(function, *args)
    return function(*args)
