"""``metaas write``: send samples from JSON lines or CSV.

Every line is read before anything is sent: a file with bad lines is
refused whole, each bad line reported once, with its number and what was
expected. A sample the server refuses is reported by its line too.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import click
from rich.progress import Progress

from metaas.client import MetaasError, Series
from metaas.server.cli._client import Connection, client_options, describe
from metaas.server.cli._errors import ExitStatus, Refused, Unavailable, exit_status_of
from metaas.server.cli._kafka import KafkaTarget, kafka_options
from metaas.server.cli._params import Command, UsageError, looks_like_seconds

CSV_FIELDS: Final = ("app", "metric", "time_ms", "value")
JSON_SHAPES: Final = (
    'a sample {"app", "metric", "time_ms", "value"} or a series '
    '{"app", "metric", "times_ms": [...], "values": [...]}, with optional "labels"'
)
CSV_SHAPE: Final = "a header app,metric,time_ms,value, any other column a label"
# Bad lines shown before the rest are only counted.
MAX_SHOWN: Final = 20
SeriesId = tuple[str, str, tuple[tuple[str, str], ...]]
Sample = tuple[SeriesId, int, float]


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line the reader does not accept, and why."""

    number: int
    reason: str


@dataclass(slots=True)
class _Samples:
    times: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Batch:
    """One Write request, and the line of each of its samples."""

    series: list[Series]
    lines: list[Sequence[int]]

    @property
    def samples(self) -> int:
        return sum(len(s.times_ms) for s in self.series)


@click.command(cls=Command)
@click.argument("source", type=click.File("r"), default="-")
@client_options
@kafka_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "jsonl", "csv"]),
    default="auto",
    help="auto: CSV for a .csv file or input whose first line is a CSV header, JSON "
    "lines for a .jsonl file or input whose first line is an object.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 500_000),
    default=10_000,
    help="Samples per Write request (with --kafka-brokers, per message at most).",
)
def write(
    source: IO[str],
    connection: Connection,
    kafka: KafkaTarget | None,
    fmt: str,
    batch_size: int,
) -> None:
    """Write samples from SOURCE (a file, or - for stdin; default stdin).

    \b
    JSON lines: one object per line, a sample or a series:
      {"app": "shop", "metric": "router.latency_ms", "labels": {"dyno": "web.1"},
       "time_ms": 1767225600000, "value": 12.5}
      {"app": "shop", "metric": "dyno.load_avg", "times_ms": [1767225600000],
       "values": [0.7]}
    CSV: a header with app,metric,time_ms,value; any other column is a label
    (an empty cell leaves it out):
      app,metric,time_ms,value,dyno
      shop,router.latency_ms,1767225600000,12.5,web.1

    Times are Unix milliseconds within the server's retention (30 days by
    default) and at most 5 minutes ahead; values are finite numbers. Samples
    become queryable within the server's flush interval (10 s by default).
    """
    name = "stdin" if source.name == "<stdin>" else source.name
    lines, chosen = _with_format(source, fmt, name)
    grouped: dict[SeriesId, _Samples] = defaultdict(_Samples)
    bad: list[BadLine] = []
    bad_count = 0
    for item in read_csv(lines, name) if chosen == "csv" else read_jsonl(lines):
        if isinstance(item, BadLine):
            bad_count += 1
            if len(bad) < MAX_SHOWN:
                bad.append(item)
            continue
        (key, t, v), number = item
        samples = grouped[key]
        samples.times.append(t)
        samples.values.append(v)
        samples.lines.append(number)
    if bad_count:
        _refuse_lines(name, bad, bad_count)
    if kafka is not None:
        click.echo(kafka.produce((b.series for b in batches(grouped, batch_size)), len(grouped)))
        return
    total = sum(len(s.times) for s in grouped.values())
    accepted = 0
    failure: click.ClickException | None = None
    shown: list[str] = []
    with connection.open() as client, Progress(transient=False) as progress:
        task = progress.add_task("writing", total=total)
        for batch in batches(grouped, batch_size):
            try:
                accepted += client.write(batch.series)
            except MetaasError as error:
                shown, failure = refusal(error, batch, name, accepted, connection.target)
                break
            progress.advance(task, batch.samples)
    # Printed once the progress bar has stopped, each on a line of its own.
    if failure is not None:
        for line in shown:
            click.echo(line, err=True)
        raise failure
    click.echo(f"wrote {accepted} samples in {len(grouped)} series")


def _with_format(source: IO[str], fmt: str, name: str) -> tuple[Iterator[str], str]:
    """The source's lines, and its format: ``fmt``, or for ``auto`` what its
    name or first line says."""
    head: list[str] = []
    for line in source:
        head.append(line)
        if line.strip():
            break
    lines = itertools.chain(head, source)
    if fmt != "auto":
        return lines, fmt
    found = detect(Path(name).suffix, head[-1] if head else "")
    if found is None:
        raise UsageError(
            f"{name}: cannot tell the format from the first line: give JSON lines "
            f"({JSON_SHAPES}) or CSV ({CSV_SHAPE}), or --format"
        )
    return lines, found


def detect(suffix: str, first: str) -> str | None:
    """``csv`` or ``jsonl`` by file suffix, else by the first line that is
    not blank; None when neither fits."""
    if suffix.lower() == ".csv":
        return "csv"
    if suffix.lower() in {".jsonl", ".ndjson", ".json"}:
        return "jsonl"
    text = first.strip()
    if not text or text[0] in '{["':
        return "jsonl"
    if "," in text:
        return "csv"
    return None


def read_jsonl(lines: Iterable[str]) -> Iterator[tuple[Sample, int] | BadLine]:
    """Each sample of JSON lines with its line number, or a BadLine."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            samples = json_samples(line)
        except ValueError as error:
            yield BadLine(number, str(error))
            continue
        for sample in samples:
            yield sample, number


def json_samples(text: str) -> list[Sample]:
    """The samples of one JSON line; ValueError says what was expected."""
    try:
        item: Any = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"not JSON ({error.msg}, column {error.colno}): expected {JSON_SHAPES}"
        ) from None
    if not isinstance(item, dict):
        raise ValueError(f"a JSON {_json_type(item)}, not an object: expected {JSON_SHAPES}")
    app, metric = _name(item, "app"), _name(item, "metric")
    key = (app, metric, _labels(item.get("labels", {})))
    if "times_ms" in item or "values" in item:
        times, values = item.get("times_ms"), item.get("values")
        if not isinstance(times, list) or not isinstance(values, list):
            raise ValueError('a series needs "times_ms" and "values", two lists of equal length')
        if len(times) != len(values):
            raise ValueError(
                f'"times_ms" has {len(times)} items and "values" {len(values)}: '
                "they align one to one"
            )
        return [
            (key, time_ms(t, f"times_ms[{i}]"), value(v, f"values[{i}]"))
            for i, (t, v) in enumerate(zip(times, values, strict=True))
        ]
    missing = [f'"{name}"' for name in ("time_ms", "value") if name not in item]
    if missing:
        raise ValueError(f"lacks {' and '.join(missing)}: expected {JSON_SHAPES}")
    return [(key, time_ms(item["time_ms"], "time_ms"), value(item["value"], "value"))]


def read_csv(lines: Iterable[str], name: str) -> Iterator[tuple[Sample, int] | BadLine]:
    """Each sample of CSV with its line number, or a BadLine; UsageError for
    a header without the columns a sample needs."""
    reader = csv.reader(lines)
    header = next(reader, None)
    while header is not None and not any(cell.strip() for cell in header):
        header = next(reader, None)
    if header is None:
        return
    names = [cell.strip() for cell in header]
    missing = [column for column in CSV_FIELDS if column not in names]
    if missing:
        raise UsageError(
            f"{name} line {reader.line_num}: the CSV header lacks {','.join(missing)}: "
            f"expected {CSV_SHAPE}"
        )
    for row in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(names):
            yield BadLine(
                number, f"has {len(row)} fields; the header has {len(names)} ({','.join(names)})"
            )
            continue
        record = {column: cell.strip() for column, cell in zip(names, row, strict=True)}
        try:
            labels = tuple(sorted((k, v) for k, v in record.items() if k not in CSV_FIELDS and v))
            key = (_name(record, "app"), _name(record, "metric"), labels)
            sample = (key, time_ms(record["time_ms"], "time_ms"), value(record["value"], "value"))
        except ValueError as error:
            yield BadLine(number, str(error))
            continue
        yield sample, number


def _name(item: dict[str, Any], key: str) -> str:
    if key not in item:
        raise ValueError(f'lacks "{key}": expected {JSON_SHAPES}')
    found = item[key]
    if not isinstance(found, str) or not found:
        raise ValueError(f'"{key}" is {json.dumps(found)}: expected a name such as "shop"')
    return found


def _labels(labels: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ValueError(
            f'"labels" is {json.dumps(labels)}: expected an object of strings such as '
            '{"dyno": "web.1"}'
        )
    return tuple(sorted(labels.items()))


def time_ms(found: Any, where: str) -> int:
    """A sample's time as Unix milliseconds; ValueError names ``where``."""
    integral = (
        (isinstance(found, int) and not isinstance(found, bool))
        or (isinstance(found, float) and found.is_integer())
        or (isinstance(found, str) and re.fullmatch(r"\s*\d+\s*", found) is not None)
    )
    number = int(found) if integral else None
    if number is None:
        raise ValueError(
            f'"{where}" is {json.dumps(found)}: expected Unix milliseconds, an integer such as '
            "1767225600000"
        )
    if looks_like_seconds(number):
        raise ValueError(
            f'"{where}" is {number}: this looks like seconds: give milliseconds ({number}000)'
        )
    return number


def value(found: Any, where: str) -> float:
    """A sample's value; ValueError names ``where``."""
    number: float | None = None
    if isinstance(found, int | float) and not isinstance(found, bool):
        number = float(found)
    elif isinstance(found, str):
        try:
            number = float(found)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise ValueError(f'"{where}" is {json.dumps(found)}: expected a finite number')
    return number


def _json_type(item: Any) -> str:
    kinds = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if item is None else kinds.get(type(item), type(item).__name__)


def _refuse_lines(name: str, bad: Sequence[BadLine], count: int) -> None:
    """Report the bad lines, one line each, and stop with status 2."""
    if count == 1:
        raise UsageError(f"{name} line {bad[0].number}: {bad[0].reason}; nothing was written")
    for line in bad:
        click.echo(f"{name} line {line.number}: {line.reason}", err=True)
    if count > len(bad):
        click.echo(f"{name}: and {count - len(bad)} more bad lines", err=True)
    raise UsageError(f"{name}: {count} lines not accepted (above); nothing was written")


def batches(grouped: dict[SeriesId, _Samples], batch_size: int) -> Iterator[Batch]:
    """Write requests of ``batch_size`` samples each (the last one fewer); a
    series longer than the room left in a request continues in the next."""
    series: list[Series] = []
    lines: list[Sequence[int]] = []
    size = 0
    for (app, metric, labels), samples in grouped.items():
        start = 0
        while start < len(samples.times):
            end = start + batch_size - size
            times, values = samples.times[start:end], samples.values[start:end]
            series.append(Series(app, metric, times, values, dict(labels)))
            lines.append(samples.lines[start:end])
            size += len(times)
            start = end
            if size >= batch_size:
                yield Batch(series, lines)
                series, lines, size = [], [], 0
    if series:
        yield Batch(series, lines)


_SERIES_FIELD: Final = re.compile(r'series\[(\d+)\]\.(\w+)(?:\[(\d+)\]|\["(.*)"\])?')
_SAMPLE_FIELDS: Final = {"times_ms": "time_ms", "values": "value"}


def at_line(violation_field: str, description: str, batch: Batch, name: str) -> str:
    """A violation of a Write request, told by the line of the sample at
    fault: ``series[0].times_ms[3]`` is the line that gave that time."""
    match = _SERIES_FIELD.fullmatch(violation_field)
    if match is None or int(match[1]) >= len(batch.lines):
        if violation_field == "series":
            return f"{name}: {description} (--batch-size {batch.samples}: give a smaller one)"
        return f"{name}: {violation_field}: {description}"
    lines = batch.lines[int(match[1])]
    part = match[2]
    if part in _SAMPLE_FIELDS and match[3] is not None and int(match[3]) < len(lines):
        return f"{name} line {lines[int(match[3])]}: {_SAMPLE_FIELDS[part]} {description}"
    more = f" (and {len(lines) - 1} more lines of this series)" if len(lines) > 1 else ""
    what = f"label {match[4]!r}:" if match[4] is not None else part
    return f"{name} line {lines[0]}{more}: {what} {description}"


def refusal(
    error: MetaasError, batch: Batch, name: str, accepted: int, target: str
) -> tuple[list[str], click.ClickException]:
    """The lines to print for a refused Write, and the error to exit with
    (status 3 for the request's fields, else as its code says)."""
    written = (
        f"{accepted} samples of earlier requests were written"
        if accepted
        else "nothing was written"
    )
    if not error.violations:
        status = exit_status_of(error)
        kind = Unavailable if status is ExitStatus.UNAVAILABLE else Refused
        return [], kind(f"{describe(error, {}, target)}; {written}")
    found = [at_line(v.field, v.description, batch, name) for v in error.violations]
    if len(found) == 1:
        return [], Refused(f"{error.code.name}: {found[0]}; {written}")
    summary = f"{error.code.name}: {name}: {len(found)} lines refused (above); {written}"
    return found, Refused(summary)
