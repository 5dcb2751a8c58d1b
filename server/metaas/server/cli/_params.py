"""Parsing of durations, times, steps and lists for the CLI, and the command
class whose usage errors are one line.

Times are what users of promtool, influx and kubectl type: ``now``,
``now-1h`` (or ``-1h``), RFC 3339 (``2026-01-01T10:00:00Z``; UTC when no
offset is given) or Unix milliseconds. A 10-digit number is refused as
seconds rather than read as a time in January 1970.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

import click

from metaas.server.cli._errors import ExitStatus

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_PART: Final = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_DURATION: Final = re.compile(rf"(?:{_PART.pattern})+")
_UNIT_MS: Final = {
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
}
_RELATIVE: Final = re.compile(r"(?:now)?\s*([+-])\s*(\S+)|now")
MINUTE_MS: Final = 60_000
# Unix seconds from 1973 to 5138 have 9 to 11 digits; as milliseconds they
# would all fall in 1970-1973, long before any stored sample.
_SECONDS: Final = range(100_000_000, 100_000_000_000)


class UsageError(click.ClickException):
    """A flag or argument the command does not accept: one line, exit status 2."""

    exit_code = int(ExitStatus.USAGE)


class Command(click.Command):
    """A command whose usage errors (a missing option, a value its type
    refuses) are one line naming the flag, without the usage text."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            raise UsageError(error.format_message()) from error


def parse_duration(text: str) -> int | None:
    """Milliseconds of ``90s``, ``5m``, ``1h30m``, ``7d``; None if it is not one."""
    text = text.strip()
    if not _DURATION.fullmatch(text):
        return None
    return sum(int(n) * _UNIT_MS[unit] for n, unit in _PART.findall(text))


def format_duration(ms: int) -> str:
    """The shortest spelling of ``ms`` that parse_duration reads back: 1h30m."""
    if ms <= 0:
        return f"{ms}ms"
    parts = []
    for unit in ("w", "d", "h", "m", "s", "ms"):
        count, ms = divmod(ms, _UNIT_MS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def looks_like_seconds(number: int) -> bool:
    """Whether a time given as milliseconds is more likely Unix seconds."""
    return number in _SECONDS


def rfc3339(ms: int) -> str:
    """Unix milliseconds as RFC 3339 in UTC, to the second when it is whole."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    spec = "seconds" if ms % 1000 == 0 else "milliseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


class Duration(click.ParamType[int, Any]):
    """``90s``, ``5m``, ``1h30m``, ``7d``: milliseconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        ms = parse_duration(str(value))
        if ms is None:
            self.fail(f"{value!r} is not a duration: give e.g. 30m, 6h, 1h30m or 7d", param, ctx)
        return ms


class Step(click.ParamType[int, Any]):
    """A bucket width the server accepts: a positive whole number of minutes."""

    name = "step"
    ACCEPTED: Final = "a whole number of minutes such as 1m, 5m, 1h or 1d"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            ms = value
        else:
            parsed = parse_duration(str(value))
            if parsed is None:
                self.fail(f"{value!r} is not a step: give {self.ACCEPTED}", param, ctx)
            ms = parsed
        if ms <= 0 or ms % MINUTE_MS:
            self.fail(
                f"{value!r} is not a whole number of minutes: give 1m, 5m, 1h or 1d", param, ctx
            )
        return ms


class RelativeTime(int):
    """Unix milliseconds given relative to now (``now-1h``): a range starting
    there is aligned like one given by --since."""


class Timestamp(click.ParamType[int, Any]):
    """A time as Unix milliseconds: ``now``, ``now-1h`` (``-1h``),
    ``now+5m``, RFC 3339 or ISO 8601 (UTC when no offset is given), or
    Unix milliseconds. ``now_ms`` is the clock relative times count from."""

    name = "time"
    ACCEPTED: Final = "now, now-1h, RFC 3339 (2026-01-01T10:00:00Z) or Unix milliseconds"

    def __init__(self, now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        self.now_ms = now_ms

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if text.isdigit():
            number = int(text)
            if looks_like_seconds(number):
                self.fail(
                    f"{text}: this looks like seconds: give milliseconds ({text}000) or "
                    f"RFC 3339 ({rfc3339(number * 1000)})",
                    param,
                    ctx,
                )
            return number
        relative = _RELATIVE.fullmatch(text)
        if relative:
            offset = parse_duration(relative[2]) if relative[2] is not None else 0
            if offset is None:
                self.fail(f"{text!r}: {relative[2]!r} is not a duration such as 1h", param, ctx)
            return RelativeTime(self.now_ms() + (-offset if relative[1] == "-" else offset))
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{text!r} is not a time: give {self.ACCEPTED}", param, ctx)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return (parsed - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


class LabelPair(click.ParamType[tuple[str, str], Any]):
    """``name=value``."""

    name = "name=value"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        name, sep, label_value = str(value).partition("=")
        if not sep or not name.strip():
            self.fail(f"{value!r} is not name=value, such as dyno=web.1", param, ctx)
        return name.strip(), label_value.strip()


class ListOf(click.ParamType[tuple[T, ...], Any]):
    """Comma-separated items of ``item``, for an option that may also be
    repeated: ``--match a=b,c=d`` is ``--match a=b --match c=d``. Empty items
    are left out."""

    def __init__(self, item: click.ParamType[T, Any], metavar: str) -> None:
        self.item = item
        self.name = metavar

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[T, ...]:
        if isinstance(value, tuple):
            return value
        return tuple(
            self.item.convert(part.strip(), param, ctx)
            for part in str(value).split(",")
            if part.strip()
        )


def flatten(
    ctx: click.Context, param: click.Parameter, value: Sequence[Sequence[T]]
) -> tuple[T, ...]:
    """The items of every use of a repeatable ListOf option, in order."""
    return tuple(item for group in value for item in group)


def list_option(
    *decls: str,
    item: click.ParamType[Any, Any],
    metavar: str,
    help: str,
    default_text: str = "",
) -> Callable[[F], F]:
    """A repeatable option whose values may also be comma-separated."""
    option: Callable[[F], F] = click.option(
        *decls,
        type=ListOf(item, metavar),
        multiple=True,
        callback=flatten,
        metavar=metavar,
        help=f"{help} Repeat the flag or separate with commas."
        + (f"  [default: {default_text}]" if default_text else ""),
    )
    return option


DURATION = Duration()
STEP = Step()
TIMESTAMP = Timestamp()
LABEL_PAIR = LabelPair()


@dataclass(frozen=True, slots=True)
class Range:
    """The range of a query or a listing, in Unix milliseconds."""

    start_ms: int
    end_ms: int

    def __str__(self) -> str:
        # To the second: what a person reads; the milliseconds add nothing.
        start, end = self.start_ms - self.start_ms % 1000, self.end_ms - self.end_ms % 1000
        return f"from {rfc3339(start)} to {rfc3339(end)}"


def range_options(default_since: str, since_note: str = "") -> Callable[[F], F]:
    """--since, --start and --end, as resolve_range reads them."""
    options = [
        click.option(
            "--since",
            type=DURATION,
            default=default_since,
            help="Range ending at --end: 30m, 6h, 1h30m, 7d"
            + (f"; {since_note}." if since_note else "."),
        ),
        click.option(
            "--start",
            type=TIMESTAMP,
            help=f"Range start, instead of --since: {Timestamp.ACCEPTED}; UTC when no offset "
            "is given.",
        ),
        click.option(
            "--end", type=TIMESTAMP, help="Range end, exclusive; as --start.  [default: now]"
        ),
    ]

    def decorate(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def resolve_range(
    since: int, start: int | None, end: int | None, now_ms: int, align_ms: int = MINUTE_MS
) -> Range:
    """The range of --since/--start/--end: from ``start`` (default: ``end``
    less ``since``) to ``end`` (default ``now_ms``). A start that is not an
    absolute time (--since, ``now-1h``) is rounded down to a multiple of
    ``align_ms``. Raises UsageError when the end is not after the start."""
    if start is None and since <= 0:
        raise UsageError(f"--since {format_duration(since)}: give a duration above zero, e.g. 1h")
    end_ms = end if end is not None else now_ms
    start_ms = start if start is not None else end_ms - since
    if start is None or isinstance(start, RelativeTime):
        start_ms -= start_ms % align_ms
    if end_ms <= start_ms:
        raise UsageError(
            f"--end {rfc3339(end_ms)} is not after --start {rfc3339(start_ms)}: "
            "give an end after the start"
        )
    return Range(start_ms, end_ms)
