"""Parsing of durations, times and label pairs for the CLI."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import click

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


class Duration(click.ParamType[int, Any]):
    """``90s``, ``5m``, ``2h``, ``7d``: milliseconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _DURATION.match(str(value).strip())
        if not match:
            self.fail(f"{value!r} is not a duration such as 90s, 5m, 2h or 7d", param, ctx)
        return int(match[1]) * _UNIT_MS[match[2]]


class Timestamp(click.ParamType[int, Any]):
    """Unix milliseconds, or ISO 8601 (UTC when no offset is given)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value).strip()
        if text.isdigit():
            return int(text)
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is neither Unix milliseconds nor an ISO 8601 time", param, ctx)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)


class LabelPair(click.ParamType[tuple[str, str], Any]):
    """``name=value``."""

    name = "name=value"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        name, sep, label_value = str(value).partition("=")
        if not sep or not name:
            self.fail(f"{value!r} is not name=value", param, ctx)
        return name, label_value


DURATION = Duration()
TIMESTAMP = Timestamp()
LABEL_PAIR = LabelPair()
