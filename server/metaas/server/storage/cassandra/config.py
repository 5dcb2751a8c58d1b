"""Settings of the Cassandra backend, parsed from its storage URL.

``cassandra://[user:password@]host[:port][,host[:port]...]/keyspace?option=value&...``
(see docs/cassandra.md for every option and why it defaults as it does).
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs, unquote, urlsplit

from metaas.server.config import ConfigError

DEFAULT_PORT: Final = 9042

_CONSISTENCY_LEVELS: Final = (
    "ANY",
    "ONE",
    "TWO",
    "THREE",
    "QUORUM",
    "ALL",
    "LOCAL_QUORUM",
    "EACH_QUORUM",
    "LOCAL_ONE",
)
# Cassandra serves neither ANY nor EACH_QUORUM for reads.
_READ_CONSISTENCY_LEVELS: Final = tuple(
    level for level in _CONSISTENCY_LEVELS if level not in ("ANY", "EACH_QUORUM")
)
_SCHEMA_MODES: Final = ("auto", "none")
_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")
_DC: Final = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


@dataclass(frozen=True, slots=True)
class Replication:
    """``SimpleStrategy`` with one factor, or ``NetworkTopologyStrategy`` with
    a factor per data centre."""

    simple_factor: int | None = 1
    per_dc: tuple[tuple[str, int], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Replication:
        """``N`` (SimpleStrategy) or ``DC:N[,DC:N...]`` (NetworkTopologyStrategy)."""
        accepted = "N (SimpleStrategy) or DC:N[,DC:N...] (NetworkTopologyStrategy), N >= 1"
        if text.isdigit():
            if int(text) < 1:
                raise ConfigError("cassandra replication", text, accepted)
            return cls(int(text))
        factors: list[tuple[str, int]] = []
        for part in text.split(","):
            dc, _, factor = part.partition(":")
            if not _DC.fullmatch(dc) or not factor.isdigit() or int(factor) < 1:
                raise ConfigError("cassandra replication", text, accepted)
            factors.append((dc, int(factor)))
        if len({dc for dc, _ in factors}) != len(factors):
            raise ConfigError("cassandra replication", text, accepted + ", each DC once")
        return cls(None, tuple(factors))

    def cql(self) -> str:
        """The keyspace's replication map as CQL."""
        if self.simple_factor is not None:
            return f"{{'class': 'SimpleStrategy', 'replication_factor': {self.simple_factor}}}"
        factors = ", ".join(f"'{dc}': {n}" for dc, n in self.per_dc)
        return f"{{'class': 'NetworkTopologyStrategy', {factors}}}"


@dataclass(frozen=True, slots=True)
class CassandraConfig:
    """Where the cluster is and how to talk to it.

    Writes default to LOCAL_QUORUM and reads to the write level, so a read
    sees every acknowledged write (R + W > RF) within the local data centre,
    and losing one replica of three blocks nothing.
    """

    hosts: tuple[tuple[str, int], ...]
    keyspace: str
    consistency: str = "LOCAL_QUORUM"
    read_consistency: str = "LOCAL_QUORUM"
    local_dc: str | None = None
    replication: Replication = field(default_factory=Replication)
    schema: str = "auto"
    read_timeout_ms: int = 10_000
    write_timeout_ms: int = 10_000
    connect_timeout_ms: int = 5_000
    fetch_size: int = 500
    max_in_flight: int = 64
    speculative_delay_ms: int = 200
    protocol_version: int = 5
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # TLS to the cluster: on with tls=true or any of the files below.
    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def describe(self) -> str:
        """Where the cluster and keyspace are (for the start-up log); never the
        credentials."""
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)
        return f"cassandra {hosts}/{self.keyspace}" + (
            f" (dc {self.local_dc})" if self.local_dc else ""
        )

    @property
    def apply_schema_on_open(self) -> bool:
        return self.schema == "auto"

    def ssl_context(self) -> ssl.SSLContext | None:
        """Verifies the server against ``tls_ca`` (else the system's CAs) and
        presents ``tls_cert``/``tls_key`` when the cluster requires client
        certificates."""
        if not (self.tls or self.tls_ca or self.tls_cert):
            return None
        context = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
        if self.tls_cert is not None:
            context.load_cert_chain(str(self.tls_cert), str(self.tls_key) if self.tls_key else None)
        return context

    @classmethod
    def from_url(cls, url: str, environ: Mapping[str, str] | None = None) -> CassandraConfig:
        """Parse ``url``. Credentials may instead come from
        ``METAAS_CASSANDRA_USERNAME`` and ``METAAS_CASSANDRA_PASSWORD``, which
        keeps the password out of command lines; error messages never show it."""
        env = os.environ if environ is None else environ
        try:
            return cls._from_url(url, env)
        except ConfigError as error:
            secret = unquote(urlsplit(url).password or "")
            if secret:
                error.args = tuple(str(a).replace(secret, "***") for a in error.args)
            raise

    @classmethod
    def _from_url(cls, url: str, env: Mapping[str, str]) -> CassandraConfig:
        parts = urlsplit(url)
        if parts.scheme != "cassandra":
            raise ConfigError("storage", url, "a cassandra://host:port/keyspace URL")
        userinfo, _, hostlist = parts.netloc.rpartition("@")
        username = env.get("METAAS_CASSANDRA_USERNAME") or None
        password = env.get("METAAS_CASSANDRA_PASSWORD") or None
        if userinfo:
            user, _, secret = userinfo.partition(":")
            username, password = unquote(user), unquote(secret) or password
        hosts = tuple(_parse_host(host) for host in hostlist.split(",") if host)
        if not hosts:
            raise ConfigError("cassandra hosts", url, "cassandra://host[:port][,host[:port]]/ks")
        # Unquoted CQL names are case-insensitive: keep the form Cassandra stores.
        keyspace = parts.path.strip("/").lower()
        if not _NAME.fullmatch(keyspace):
            raise ConfigError(
                "cassandra keyspace",
                keyspace,
                "a name of 1-48 letters, digits and _ starting with a letter, after the hosts",
            )
        options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        return cls._with_options(hosts, keyspace, username, password, options)

    @classmethod
    def _with_options(
        cls,
        hosts: tuple[tuple[str, int], ...],
        keyspace: str,
        username: str | None,
        password: str | None,
        options: dict[str, str],
    ) -> CassandraConfig:
        consistency = _choice(options, "consistency", "LOCAL_QUORUM", _CONSISTENCY_LEVELS)
        read_consistency = _choice(
            options, "read_consistency", consistency, _READ_CONSISTENCY_LEVELS
        )
        dc = options.pop("dc", None)
        if dc is not None and not _DC.fullmatch(dc):
            raise ConfigError("cassandra dc", dc, "a data centre name")
        config = cls(
            hosts=hosts,
            keyspace=keyspace,
            consistency=consistency,
            read_consistency=read_consistency,
            local_dc=dc,
            replication=Replication.parse(options.pop("replication", "1")),
            schema=_choice(options, "schema", "auto", _SCHEMA_MODES, upper=False),
            read_timeout_ms=_integer(options, "read_timeout_ms", 10_000, 100, 600_000),
            write_timeout_ms=_integer(options, "write_timeout_ms", 10_000, 100, 600_000),
            connect_timeout_ms=_integer(options, "connect_timeout_ms", 5_000, 100, 600_000),
            fetch_size=_integer(options, "fetch_size", 500, 1, 100_000),
            max_in_flight=_integer(options, "max_in_flight", 64, 1, 10_000),
            speculative_delay_ms=_integer(options, "speculative_delay_ms", 200, 0, 60_000),
            protocol_version=_integer(options, "protocol_version", 5, 4, 5),
            username=username,
            password=password,
            tls=_choice(options, "tls", "false", ("true", "false"), upper=False) == "true",
            tls_ca=_path(options, "tls_ca"),
            tls_cert=_path(options, "tls_cert"),
            tls_key=_path(options, "tls_key"),
        )
        if (config.tls_cert is None) != (config.tls_key is None):
            raise ConfigError("cassandra tls_cert / tls_key", "one of them", "both or neither")
        if options:
            raise ConfigError(
                "cassandra option",
                ", ".join(sorted(options)),
                "consistency, read_consistency, dc, replication, schema, read_timeout_ms, "
                "write_timeout_ms, connect_timeout_ms, fetch_size, max_in_flight, "
                "speculative_delay_ms, protocol_version, tls, tls_ca, tls_cert, tls_key",
            )
        return config


def _path(options: dict[str, str], name: str) -> Path | None:
    raw = options.pop(name, None)
    if raw is None:
        return None
    path = Path(raw)
    if not path.is_file():
        raise ConfigError(f"cassandra {name}", raw, "a readable PEM file")
    return path


def _parse_host(text: str) -> tuple[str, int]:
    accepted = "host[:port] or [ipv6][:port], port 1-65535"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") if rest else str(DEFAULT_PORT)
        if rest and not rest.startswith(":"):
            raise ConfigError("cassandra host", text, accepted)
    else:
        host, _, port = text.partition(":")
        port = port or str(DEFAULT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("cassandra host", text, accepted)
    return host, int(port)


def _choice(
    options: dict[str, str],
    name: str,
    default: str,
    accepted: tuple[str, ...],
    *,
    upper: bool = True,
) -> str:
    raw = options.pop(name, default)
    value = raw.upper() if upper else raw.lower()
    if value not in accepted:
        raise ConfigError(f"cassandra {name}", raw, ", ".join(accepted))
    return value


def _integer(options: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = options.pop(name, None)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ConfigError(f"cassandra {name}", raw, f"an integer from {low} to {high}")
    return int(raw)
