"""``metaas write``: send samples from JSON lines or CSV."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import click
from rich.progress import Progress

from metaas.client import MetaasError, Series
from metaas.server.cli._client import Connection, client_options

_CSV_FIELDS = {"app", "metric", "time_ms", "value"}
SeriesId = tuple[str, str, tuple[tuple[str, str], ...]]


@click.command()
@click.argument("source", type=click.File("r"), default="-")
@client_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "jsonl", "csv"]),
    default="auto",
    help="auto: by file extension (.csv), else JSON lines.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 500_000),
    default=10_000,
    help="Samples per Write request.",
)
def write(
    source: IO[str],
    connection: Connection,
    fmt: str,
    batch_size: int,
) -> None:
    """Write samples from SOURCE (a file, or - for stdin).

    \b
    JSON lines, one sample or one series per line:
      {"app": "shop", "metric": "router.latency_ms", "labels": {"dyno": "web.1"},
       "time_ms": 1767225600000, "value": 12.5}
      {"app": "shop", "metric": "load", "times_ms": [...], "values": [...]}
    CSV with a header: app,metric,time_ms,value and any other column as a label.
    """
    is_csv = fmt == "csv" or (fmt == "auto" and Path(source.name).suffix.lower() == ".csv")
    try:
        samples = _from_csv(source) if is_csv else _from_jsonl(source)
        grouped: dict[SeriesId, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
        for key, t, v in samples:
            grouped[key][0].append(t)
            grouped[key][1].append(v)
    except (ValueError, KeyError, TypeError) as error:
        raise click.ClickException(f"{source.name}: {error}") from error
    total = sum(len(times) for times, _ in grouped.values())
    accepted = 0
    client = connection.open()
    with client, Progress(transient=False) as progress:
        task = progress.add_task("writing", total=total)
        try:
            for batch in _batches(grouped, batch_size):
                accepted += client.write(batch)
                progress.advance(task, sum(len(s.times_ms) for s in batch))
        except MetaasError as error:
            for violation in error.violations:
                click.echo(f"  {violation.field}: {violation.description}", err=True)
            raise click.ClickException(f"{error} ({accepted} samples written before)") from error
    click.echo(f"wrote {accepted} samples in {len(grouped)} series")


def _from_jsonl(lines: Iterable[str]) -> Iterator[tuple[SeriesId, int, float]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item: dict[str, Any] = json.loads(line)
            key = (item["app"], item["metric"], tuple(sorted(item.get("labels", {}).items())))
            if "times_ms" in item:
                if len(item["times_ms"]) != len(item["values"]):
                    raise ValueError("times_ms and values differ in length")
                for t, v in zip(item["times_ms"], item["values"], strict=True):
                    yield key, int(t), float(v)
            else:
                yield key, int(item["time_ms"]), float(item["value"])
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"line {number}: {error!r}") from error


def _from_csv(lines: Iterable[str]) -> Iterator[tuple[SeriesId, int, float]]:
    reader = csv.DictReader(lines)
    missing = _CSV_FIELDS - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"CSV header lacks {', '.join(sorted(missing))}")
    for number, row in enumerate(reader, 2):
        labels = tuple(sorted((k, v) for k, v in row.items() if k not in _CSV_FIELDS and v))
        try:
            yield (row["app"], row["metric"], labels), int(row["time_ms"]), float(row["value"])
        except (ValueError, TypeError) as error:
            raise ValueError(f"line {number}: {error}") from error


def _batches(
    grouped: dict[SeriesId, tuple[list[int], list[float]]], batch_size: int
) -> Iterator[list[Series]]:
    batch: list[Series] = []
    size = 0
    for (app, metric, labels), (times, values) in grouped.items():
        for start in range(0, len(times), batch_size):
            chunk_t, chunk_v = times[start : start + batch_size], values[start : start + batch_size]
            batch.append(Series(app, metric, chunk_t, chunk_v, dict(labels)))
            size += len(chunk_t)
            if size >= batch_size:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch
