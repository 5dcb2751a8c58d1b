"""How the client commands print rows: a table that fits the terminal, CSV,
TSV or JSON (``--output``).

A table never cuts a value. When it is wider than the terminal it first
writes times narrower (the date or year moves to the title), then wraps its
value columns into blocks that each repeat the key columns (time, labels).
Numbers have fixed decimals per column; integers (counts) stay integers.
"""

from __future__ import annotations

import csv
import enum
import functools
import io
import math
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import click

from metaas.server.cli._params import rfc3339

FORMATS: Final = ("table", "csv", "tsv", "json")
GAP: Final = "  "
NONE: Final = "<none>"
# Past this magnitude fixed decimals are unreadable: such values are written
# with an exponent.
_FIXED_LIMIT: Final = 1e15

Cell = str | int | float


class Kind(enum.Enum):
    TIME = "time"  # Unix milliseconds
    TEXT = "text"
    NUMBER = "number"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: Kind
    cells: Sequence[Cell]


@dataclass(frozen=True, slots=True)
class Frame:
    """Rows held as columns; the first ``keys`` columns say what a row is
    (its time and labels), the others hold its values."""

    columns: Sequence[Column]
    keys: int

    @property
    def rows(self) -> int:
        return len(self.columns[0].cells) if self.columns else 0


def output_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--output/-o table|csv|tsv|json`` (and ``--json``, the same as
    ``--output json``), passed to the command as ``output``."""

    @functools.wraps(command)
    def with_output(*args: Any, output: str, as_json: bool, **kwargs: Any) -> Any:
        return command(*args, output="json" if as_json else output, **kwargs)

    decorated = click.option("--json", "as_json", is_flag=True, help="The same as --output json.")(
        with_output
    )
    return click.option(
        "--output",
        "-o",
        type=click.Choice(FORMATS),
        default="table",
        help="table: aligned to fit the terminal; csv and tsv: a header row and one row "
        "per line, times in RFC 3339; json: one document.",
    )(decorated)


def terminal_width() -> int | None:
    """The width a table must fit: $COLUMNS, else the terminal's; None when
    stdout is not a terminal (a file or a pipe takes any width)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def numbers(values: Sequence[Cell]) -> list[str]:
    """A column of values as text: integers as integers, other numbers with
    the same fixed decimals (2, more when every value is below 1 so that 3
    significant digits show), NaN as ``-``."""
    floats = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    largest = max((abs(v) for v in floats), default=0.0)
    decimals = 2 if largest == 0 or largest >= 1 else min(6, 2 - math.floor(math.log10(largest)))
    return [_number(v, decimals) for v in values]


def _number(value: Cell, decimals: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "-"
    if math.isinf(value) or abs(value) >= _FIXED_LIMIT:
        return f"{value:.6g}"
    return f"{value:.{decimals}f}"


# Time formats from widest to narrowest, with what the title must then say.
_TIME_FORMATS: Final = (
    ("%Y-%m-%d %H:%M", ""),
    ("%m-%d %H:%M", "%Y"),
    ("%H:%M", "%Y-%m-%d"),
)


def _times(cells: Sequence[Cell]) -> list[tuple[list[str], str]]:
    """The spellings of a time column that lose nothing, widest first, each
    with the common part the title must add (a year, a date)."""
    moments = [datetime.fromtimestamp(int(c) / 1000, UTC) for c in cells]
    # Buckets start on whole minutes unless --start was not on one: then
    # their seconds tell which minutes they hold.
    seconds = ":%S" if any(int(c) % 60_000 for c in cells) else ""
    choices = []
    for fmt, common in _TIME_FORMATS:
        fmt += seconds
        shared = {m.strftime(common) for m in moments} if common else {""}
        if len(shared) == 1:
            choices.append(([m.strftime(fmt) for m in moments], shared.pop()))
    return choices


def table(frame: Frame, title: str, width: int | None) -> str:
    """The frame as aligned text under ``title``, fitting ``width`` if it can.

    ``{date}`` in the title becomes the date (or year) that the times leave
    out to fit, and a space; or nothing when they leave out none."""
    texts = [_cells(column) for column in frame.columns]
    time_at = next((i for i, c in enumerate(frame.columns) if c.kind is Kind.TIME), None)
    choices = (_times(frame.columns[time_at].cells) if time_at is not None else []) or [([], "")]
    note = ""
    for cells, common in choices:
        if time_at is not None and frame.rows:
            texts[time_at] = cells
            note = common
        if width is None or _width(frame, texts, range(len(texts))) <= width:
            break
    heading = title.replace("{date}", f"{note} " if note else "")
    keys = range(frame.keys)
    blocks: list[list[int]] = []
    for index in range(frame.keys, len(frame.columns)):
        if blocks and (width is None or _width(frame, texts, [*keys, *blocks[-1], index]) <= width):
            blocks[-1].append(index)
        else:
            blocks.append([index])
    lines = [heading]
    for number, block in enumerate(blocks or [[]]):
        if number:
            lines.append("")
        lines.extend(_render(frame, texts, [*keys, *block]))
    return "\n".join(lines)


def _cells(column: Column) -> list[str]:
    if column.kind is Kind.NUMBER:
        return numbers(column.cells)
    if column.kind is Kind.TIME:
        return [str(c) for c in column.cells]
    return [str(c) if c != "" else NONE for c in column.cells]


def _width(frame: Frame, texts: Sequence[Sequence[str]], indexes: Sequence[int]) -> int:
    widths = [max([len(frame.columns[i].name), *map(len, texts[i])]) for i in indexes]
    return sum(widths) + len(GAP) * (len(widths) - 1)


def _render(frame: Frame, texts: Sequence[Sequence[str]], indexes: Sequence[int]) -> list[str]:
    widths = {i: max([len(frame.columns[i].name), *map(len, texts[i])]) for i in indexes}

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if frame.columns[i].kind is Kind.NUMBER else cell.ljust(widths[i])
            for i, cell in zip(indexes, cells, strict=True)
        ]
        return GAP.join(parts).rstrip()

    rows = [line([frame.columns[i].name for i in indexes])]
    rows.extend(line([texts[i][r] for i in indexes]) for r in range(frame.rows))
    return rows


def delimited(frame: Frame, delimiter: str) -> str:
    """CSV (``,``) or TSV (``\\t``): a header, then a row per line; times in
    RFC 3339, numbers in full precision (integers as integers, NaN empty)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow([column.name for column in frame.columns])
    for r in range(frame.rows):
        writer.writerow([_raw(column.kind, column.cells[r]) for column in frame.columns])
    return buffer.getvalue()


def _raw(kind: Kind, cell: Cell) -> str:
    if kind is Kind.TIME:
        return rfc3339(int(cell))
    if isinstance(cell, float):
        return "" if math.isnan(cell) else repr(cell)
    return str(cell)


def emit(frame: Frame, output: str, title: str) -> None:
    """Print the frame as ``output`` says (table, csv or tsv)."""
    if output == "table":
        click.echo(table(frame, title, terminal_width()))
    else:
        click.echo(delimited(frame, "," if output == "csv" else "\t"), nl=False)


def json_number(value: float) -> float | None:
    """A value for JSON, which has no NaN."""
    return None if isinstance(value, float) and math.isnan(value) else value
