"""Who is calling, and may they touch this app.

Callers authenticate with a bearer token (``authorization: Bearer <token>``)
or, under mutual TLS, with their client certificate. The access file holds
only SHA-256 hashes of tokens::

    {"tokens": [{"sha256": "<hex>", "apps": ["app-a"], "admin": false}],
     "identities": [{"name": "router-7", "apps": ["*"], "admin": false}]}

``identities`` map a client certificate's common name or subject alternative
name. The file is re-read when it changes; a broken file keeps the last good
one. Tokens are never logged: a principal is named by a prefix of its hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc

from metaas.server.api.errors import RequestError
from metaas.server.config import ConfigError, SecurityConfig

log = logging.getLogger(__name__)
_RECHECK_S: Final = 1.0
_HEX: Final = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    apps: frozenset[str] | None  # None: every app
    admin: bool

    def may_access(self, app: str) -> bool:
        return self.apps is None or app in self.apps

    def require_app(self, app: str, field: str) -> None:
        """Admins too: an admin grant widens what a caller may do, never
        which apps it may do it to."""
        if not self.may_access(app):
            raise RequestError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{field}: this caller may not access app {app!r}",
                [(field, "app not allowed for this caller")],
            )

    def require_admin(self) -> None:
        if not self.admin:
            raise RequestError(
                grpc.StatusCode.PERMISSION_DENIED, "this operation needs an admin caller"
            )


# When no authentication is configured (loopback or --insecure).
ANONYMOUS: Final = Principal("anonymous", None, True)


def _unauthenticated(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.UNAUTHENTICATED, message)


@dataclass(frozen=True, slots=True)
class _AccessList:
    tokens: dict[str, Principal]  # by sha256 hex
    identities: dict[str, Principal]


def parse_access_file(text: str) -> _AccessList:
    """Validate and load an access file; ValueError says what is wrong."""
    document: Any = json.loads(text)
    if not isinstance(document, dict):
        raise ValueError("the access file must be a JSON object")
    unknown = set(document) - {"tokens", "identities"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    tokens: dict[str, Principal] = {}
    for i, entry in enumerate(_objects(document, "tokens")):
        digest = str(entry.get("sha256", "")).lower()
        if len(digest) != 64 or not set(digest) <= _HEX:
            raise ValueError(f"tokens[{i}].sha256 must be 64 hex digits")
        tokens[digest] = Principal(f"token:{digest[:8]}", *_grants(entry, f"tokens[{i}]"))
    identities: dict[str, Principal] = {}
    for i, entry in enumerate(_objects(document, "identities")):
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"identities[{i}].name must be a certificate name")
        identities[name] = Principal(f"cert:{name}", *_grants(entry, f"identities[{i}]"))
    return _AccessList(tokens, identities)


def _objects(document: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """``document[key]``: a list of JSON objects, or absent."""
    entries = document.get(key, [])
    if not isinstance(entries, list):
        raise ValueError(f"{key} must be a list of objects")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{key}[{i}] must be an object")
    return entries


def _grants(entry: Any, where: str) -> tuple[frozenset[str] | None, bool]:
    apps = entry.get("apps")
    if not isinstance(apps, list) or not all(isinstance(a, str) and a for a in apps):
        raise ValueError(f'{where}.apps must be a list of app names, or ["*"]')
    admin = entry.get("admin", False)
    if not isinstance(admin, bool):
        raise ValueError(f"{where}.admin must be true or false")
    return (None if "*" in apps else frozenset(apps)), admin


class AccessFile:
    """The access list, reloaded when the file changes."""

    def __init__(self, path: Path, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._path = path
        self._monotonic = monotonic
        self._stamp = self._stat()
        try:
            self._access = parse_access_file(path.read_text())
        except (OSError, ValueError) as error:  # fail fast at start
            raise ConfigError(
                "METAAS_AUTH_TOKENS / --auth-tokens",
                str(path),
                f"an access file: {_describe(error)}",
            ) from error
        self._checked = monotonic()
        self.reload_errors = 0

    def current(self) -> _AccessList:
        now = self._monotonic()
        if now - self._checked >= _RECHECK_S:
            self._checked = now
            stamp = self._stat()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._access = parse_access_file(self._path.read_text())
                    log.info("reloaded access file %s", self._path)
                except (OSError, ValueError) as error:
                    self.reload_errors += 1
                    log.error(
                        "access file %s rejected, keeping the last good one: %s",
                        self._path,
                        _describe(error),
                    )
        return self._access

    def _stat(self) -> tuple[int, int]:
        try:
            status = os.stat(self._path)
        except OSError:
            return (0, 0)
        return (status.st_mtime_ns, status.st_size)


def _describe(error: Exception) -> str:
    # json errors quote the offending text, which could be a secret.
    if isinstance(error, json.JSONDecodeError):
        return f"invalid JSON at line {error.lineno} column {error.colno}"
    return str(error)


class Authenticator:
    def __init__(
        self, security: SecurityConfig, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        """``monotonic`` paces the re-reads of the access file (tests pass
        their own clock)."""
        self._security = security
        self._access = (
            AccessFile(security.auth_tokens, monotonic=monotonic) if security.auth_tokens else None
        )

    def authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        """The caller's principal, or RequestError(UNAUTHENTICATED)."""
        if not self._security.authenticates:
            return ANONYMOUS
        header = next(
            (v for k, v in (context.invocation_metadata() or ()) if k == "authorization"), None
        )
        if header is not None:
            return self._by_token(header if isinstance(header, str) else header.decode())
        if self._security.tls_client_ca is not None:
            return self._by_certificate(context)
        raise _unauthenticated("missing metadata 'authorization: Bearer <token>'")

    def _by_token(self, header: str) -> Principal:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthenticated("expected metadata 'authorization: Bearer <token>'")
        if self._access is None:
            raise _unauthenticated("this server does not accept tokens")
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        principal = self._access.current().tokens.get(digest)
        if principal is None:
            raise _unauthenticated("unknown token")
        return principal

    def _by_certificate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        auth = context.auth_context()
        names = [
            n.decode()
            for key in ("x509_subject_alternative_name", "x509_common_name")
            for n in auth.get(key, ())
        ]
        if not names:
            raise _unauthenticated("no client certificate")
        if self._access is None:
            # mTLS alone: the client CA is the allow-list.
            return Principal(f"cert:{names[-1]}", None, True)
        identities = self._access.current().identities
        for name in names:
            if name in identities:
                return identities[name]
        raise _unauthenticated("client certificate is not on the access list")
