"""Settings of the DynamoDB backend, parsed from its storage URL.

``dynamodb://TABLE?endpoint=http://127.0.0.1:8000&region=us-east-1&...``

Without ``endpoint`` the client uses the AWS endpoint of the region (from the
URL or the environment); credentials always come from the standard provider
chain (environment, shared files, container or instance roles), never from
the URL. See docs/dynamodb.md for why the defaults are what they are.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from metaas.server.config import ConfigError, Settings, setting_of

_TABLE: Final = re.compile(r"[A-Za-z0-9_.-]{3,255}")
_REGION: Final = re.compile(r"[a-z]{2}(-[a-z0-9]+)+")
_RETRY_MODES: Final = ("standard", "adaptive", "legacy")
# The URL's setting; the migration target's errors are named by app.py.
_STORAGE: Final = setting_of(Settings, "storage_url").label
_BOOLEANS: Final = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True, slots=True)
class DynamoConfig:
    """The table, where to reach it, and how the HTTP client behaves.

    Every field except ``table`` is also a URL option of the same name.
    """

    table: str
    endpoint: str | None = None
    region: str | None = None
    # Connections the client may open at once (botocore's default is 10).
    max_pool_connections: int = 64
    # Requests one storage call runs in parallel (batches, day partitions).
    concurrency: int = 16
    connect_timeout_s: float = 1.0
    read_timeout_s: float = 5.0
    retry_mode: str = "standard"
    # Attempts per request, the first included, for errors the SDK retries.
    max_attempts: int = 4
    tcp_keepalive: bool = True
    # How long an idle pooled connection is kept for reuse.
    idle_timeout_s: float = 15.0
    # Rounds of BatchWriteItem/BatchGetItem for unprocessed items before the
    # call fails with Throttled.
    batch_attempts: int = 8
    # Strongly consistent queries: a read sees every write that returned, as
    # the storage contract says. False halves the read cost of queries.
    consistent_queries: bool = True

    def __post_init__(self) -> None:
        if not _TABLE.fullmatch(self.table):
            raise ConfigError(
                "dynamodb table", self.table, "3-255 characters of letters, digits, _ . -"
            )
        if self.endpoint is not None:
            parts = urlsplit(self.endpoint)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError("dynamodb endpoint", self.endpoint, "http(s)://host[:port]")
        if self.region is not None and not _REGION.fullmatch(self.region):
            raise ConfigError("dynamodb region", self.region, "an AWS region such as us-east-1")
        _check_range("max_pool_connections", self.max_pool_connections, 1, 10_000)
        _check_range("concurrency", self.concurrency, 1, 1_000)
        _check_range("connect_timeout_s", self.connect_timeout_s, 0.01, 300)
        _check_range("read_timeout_s", self.read_timeout_s, 0.01, 300)
        _check_range("max_attempts", self.max_attempts, 1, 20)
        _check_range("idle_timeout_s", self.idle_timeout_s, 0, 3_600)
        _check_range("batch_attempts", self.batch_attempts, 1, 50)
        if self.retry_mode not in _RETRY_MODES:
            raise ConfigError("dynamodb retry_mode", self.retry_mode, " or ".join(_RETRY_MODES))

    @classmethod
    def from_url(cls, url: str) -> DynamoConfig:
        parts = urlsplit(url)
        if parts.scheme != "dynamodb" or not parts.netloc or parts.path not in ("", "/"):
            raise ConfigError(
                "storage", url, "dynamodb://TABLE?endpoint=http://host:port&region=REGION"
            )
        options = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        parsers = _option_parsers()
        unknown = sorted(set(options) - set(parsers))
        if unknown:
            raise ConfigError(
                "dynamodb storage option", unknown[0], "one of " + ", ".join(sorted(parsers))
            )
        values: dict[str, Any] = {name: parsers[name](name, text) for name, text in options.items()}
        return cls(table=parts.netloc, **values)

    def describe(self) -> str:
        """The table and where it is (for the start-up log and errors)."""
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"dynamodb table {self.table}{where}" + (f" ({self.region})" if self.region else "")

    def missing_credentials(self) -> ConfigError:
        """The error for no credentials in the standard chain: which variables
        to set (an emulator takes any values)."""
        emulator = " (any values: the emulator does not check them)" if self.endpoint else ""
        return ConfigError(
            f"{_STORAGE}: AWS credentials for the {self.describe()}",
            "none found",
            f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment{emulator}, "
            "or AWS_PROFILE, or a role of the container or instance",
        )

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of ``aiobotocore.config.AioConfig``."""
        return {
            "max_pool_connections": self.max_pool_connections,
            "connect_timeout": self.connect_timeout_s,
            "read_timeout": self.read_timeout_s,
            "retries": {"mode": self.retry_mode, "max_attempts": self.max_attempts},
            "tcp_keepalive": self.tcp_keepalive,
            "connector_args": {"keepalive_timeout": self.idle_timeout_s},
        }


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"dynamodb {name}", value, f"a number from {low} to {high}")


def _option_parsers() -> dict[str, Callable[[str, str], object]]:
    kinds: dict[str, Callable[[str, str], object]] = {
        "int": _parse_int,
        "float": _parse_float,
        "bool": _parse_bool,
        "str": lambda _name, text: text,
        "str | None": lambda _name, text: text,
    }
    return {f.name: kinds[str(f.type)] for f in fields(DynamoConfig) if f.name != "table"}


def _parse_int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"dynamodb {name}", text, "an integer") from None


def _parse_float(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"dynamodb {name}", text, "a number") from None


def _parse_bool(name: str, text: str) -> bool:
    try:
        return _BOOLEANS[text.lower()]
    except KeyError:
        raise ConfigError(f"dynamodb {name}", text, "true or false") from None
