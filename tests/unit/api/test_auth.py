"""Who is calling, and which apps they may touch: tokens, client
certificates, and the access file reloaded under a running server."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from metaas.server.api.auth import ANONYMOUS, AccessFile, Authenticator, parse_access_file
from metaas.server.api.errors import RequestError
from metaas.server.config import ConfigError, SecurityConfig
from tests.fakes import FakeServicerContext

SHOP_TOKEN = "shop-secret-token"
ADMIN_TOKEN = "admin-secret-token"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def access(
    tokens: list[dict[str, Any]] | None = None, identities: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {"tokens": tokens or [], "identities": identities or []}


GRANTS = access(
    tokens=[
        {"sha256": sha(SHOP_TOKEN), "apps": ["shop"]},
        {"sha256": sha(ADMIN_TOKEN).upper(), "apps": ["shop", "bank"], "admin": True},
    ],
    identities=[
        {"name": "router-7", "apps": ["*"]},
        {"name": "spiffe://mesh/agent", "apps": ["bank"], "admin": True},
    ],
)


def write(path: Path, document: object | str) -> None:
    """Replace the access file, as an operator would; its change is seen on
    the next check."""
    previous = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    stamp = max(previous + 1_000_000, path.stat().st_mtime_ns)
    os.utime(path, ns=(stamp, stamp))


def ticking() -> Callable[[], float]:
    """A clock that moves a second per reading: the access file is checked
    for changes at every call."""
    seconds = itertools.count(0.0, 1.0)
    return lambda: next(seconds)


@pytest.fixture
def access_file(tmp_path: Path) -> Path:
    path = tmp_path / "access.json"
    write(path, GRANTS)
    return path


@pytest.fixture
def certificates(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Files where the configuration wants a server certificate, its key and
    a client CA (the authenticator never opens them: gRPC does)."""
    paths = tuple(tmp_path / f"{name}.pem" for name in ("cert", "key", "client-ca"))
    for path in paths:
        path.write_text("-")
    return paths[0], paths[1], paths[2]


def mutual_tls(
    certificates: tuple[Path, Path, Path], access_file: Path | None = None
) -> SecurityConfig:
    cert, key, client_ca = certificates
    return SecurityConfig(
        tls_cert=cert, tls_key=key, tls_client_ca=client_ca, auth_tokens=access_file
    )


def refused(authenticator: Authenticator, context: grpc.aio.ServicerContext[Any, Any]) -> str:
    with pytest.raises(RequestError) as caught:
        authenticator.authenticate(context)
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    return caught.value.message


def test_without_authentication_every_caller_is_the_anonymous_admin() -> None:
    authenticator = Authenticator(SecurityConfig(), monotonic=ticking())
    principal = authenticator.authenticate(FakeServicerContext.bearer("anything"))
    assert principal is ANONYMOUS
    assert principal.admin
    assert principal.may_access("any-app")


def test_a_token_is_the_principal_it_grants(access_file: Path) -> None:
    authenticator = Authenticator(SecurityConfig(auth_tokens=access_file), monotonic=ticking())
    principal = authenticator.authenticate(FakeServicerContext.bearer(SHOP_TOKEN))
    assert principal.name == f"token:{sha(SHOP_TOKEN)[:8]}"
    assert SHOP_TOKEN not in principal.name
    assert (principal.apps, principal.admin) == (frozenset({"shop"}), False)
    # Hashes are matched whatever their case in the file; the scheme too.
    context = FakeServicerContext(metadata=[("authorization", f"bearer  {ADMIN_TOKEN} ")])
    admin = authenticator.authenticate(context.typed())
    assert (admin.apps, admin.admin) == (frozenset({"shop", "bank"}), True)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "missing metadata"),
        ((("authorization", f"Basic {SHOP_TOKEN}"),), "expected metadata"),
        ((("authorization", "Bearer "),), "expected metadata"),
        ((("authorization", "Bearer not-a-known-token"),), "unknown token"),
        ((("x-token", SHOP_TOKEN),), "missing metadata"),
    ],
)
def test_a_caller_without_a_known_token_is_unauthenticated(
    access_file: Path, metadata: tuple[tuple[str, str], ...], message: str
) -> None:
    authenticator = Authenticator(SecurityConfig(auth_tokens=access_file), monotonic=ticking())
    found = refused(authenticator, FakeServicerContext(metadata=metadata).typed())
    assert message in found
    assert SHOP_TOKEN not in found


def test_a_token_without_an_access_file_is_refused(certificates: tuple[Path, Path, Path]) -> None:
    authenticator = Authenticator(mutual_tls(certificates), monotonic=ticking())
    message = refused(authenticator, FakeServicerContext.bearer(SHOP_TOKEN))
    assert "does not accept tokens" in message


def test_a_certificate_is_the_identity_it_names(
    access_file: Path, certificates: tuple[Path, Path, Path]
) -> None:
    authenticator = Authenticator(mutual_tls(certificates, access_file), monotonic=ticking())
    by_name = FakeServicerContext(auth={"x509_common_name": [b"router-7"]}).typed()
    principal = authenticator.authenticate(by_name)
    assert (principal.name, principal.apps, principal.admin) == ("cert:router-7", None, False)
    # Subject alternative names are tried before the common name.
    both = FakeServicerContext(
        auth={
            "x509_subject_alternative_name": [b"spiffe://mesh/agent"],
            "x509_common_name": [b"router-7"],
        }
    ).typed()
    agent = authenticator.authenticate(both)
    assert (agent.name, agent.apps, agent.admin) == (
        "cert:spiffe://mesh/agent",
        frozenset({"bank"}),
        True,
    )


def test_a_token_is_preferred_to_the_certificate(
    access_file: Path, certificates: tuple[Path, Path, Path]
) -> None:
    authenticator = Authenticator(mutual_tls(certificates, access_file), monotonic=ticking())
    context = FakeServicerContext(
        metadata=[("authorization", f"Bearer {SHOP_TOKEN}")],
        auth={"x509_common_name": [b"router-7"]},
    )
    assert authenticator.authenticate(context.typed()).apps == frozenset({"shop"})


def test_certificates_not_on_the_list_or_absent_are_unauthenticated(
    access_file: Path, certificates: tuple[Path, Path, Path]
) -> None:
    authenticator = Authenticator(mutual_tls(certificates, access_file), monotonic=ticking())
    stranger = FakeServicerContext(auth={"x509_common_name": [b"stranger"]}).typed()
    assert "not on the access list" in refused(authenticator, stranger)
    assert "no client certificate" in refused(authenticator, FakeServicerContext().typed())


def test_with_mutual_tls_alone_the_client_ca_is_the_allow_list(
    certificates: tuple[Path, Path, Path],
) -> None:
    authenticator = Authenticator(mutual_tls(certificates), monotonic=ticking())
    context = FakeServicerContext(
        auth={"x509_subject_alternative_name": [b"alt"], "x509_common_name": [b"anyone"]}
    ).typed()
    principal = authenticator.authenticate(context)
    assert (principal.name, principal.apps, principal.admin) == ("cert:anyone", None, True)


def test_an_admin_grant_never_widens_the_apps(access_file: Path) -> None:
    authenticator = Authenticator(SecurityConfig(auth_tokens=access_file), monotonic=ticking())
    admin = authenticator.authenticate(FakeServicerContext.bearer(ADMIN_TOKEN))
    admin.require_admin()
    admin.require_app("bank", "app")
    with pytest.raises(RequestError) as caught:
        admin.require_app("payroll", "app")
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.violations == (("app", "app not allowed for this caller"),)
    assert "'payroll'" in caught.value.message


def test_a_non_admin_is_refused_admin_operations(access_file: Path) -> None:
    authenticator = Authenticator(SecurityConfig(auth_tokens=access_file), monotonic=ticking())
    caller = authenticator.authenticate(FakeServicerContext.bearer(SHOP_TOKEN))
    caller.require_app("shop", "series[0].app")
    with pytest.raises(RequestError) as caught:
        caller.require_admin()
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(RequestError) as caught:
        caller.require_app("bank", "series[0].app")
    assert caught.value.violations == (("series[0].app", "app not allowed for this caller"),)


def test_a_star_grants_every_app() -> None:
    document = access(tokens=[{"sha256": sha(SHOP_TOKEN), "apps": ["shop", "*"]}])
    principal = parse_access_file(json.dumps(document)).tokens[sha(SHOP_TOKEN)]
    assert principal.apps is None
    assert principal.may_access("anything")
    assert not principal.admin


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "must be a JSON object"),
        ({"tokens": [], "users": []}, "unknown keys ['users']"),
        ({"tokens": {}}, "tokens must be a list of objects"),
        ({"tokens": ["abc"]}, "tokens[0] must be an object"),
        ({"tokens": [{"sha256": "ab", "apps": ["a"]}]}, "tokens[0].sha256 must be 64 hex digits"),
        ({"tokens": [{"sha256": "g" * 64, "apps": ["a"]}]}, "64 hex digits"),
        ({"tokens": [{"sha256": sha("t")}]}, "tokens[0].apps must be a list"),
        ({"tokens": [{"sha256": sha("t"), "apps": "shop"}]}, "tokens[0].apps must be a list"),
        ({"tokens": [{"sha256": sha("t"), "apps": [""]}]}, "tokens[0].apps must be a list"),
        (
            {"tokens": [{"sha256": sha("t"), "apps": ["a"], "admin": "yes"}]},
            "tokens[0].admin must be true or false",
        ),
        ({"identities": [{"apps": ["a"]}]}, "identities[0].name must be a certificate name"),
        ({"identities": [{"name": "", "apps": ["a"]}]}, "identities[0].name"),
        ({"identities": [{"name": "n", "apps": [1]}]}, "identities[0].apps must be a list"),
    ],
)
def test_a_wrong_shaped_access_file_says_what_is_wrong(document: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_access_file(json.dumps(document))


def test_an_access_file_that_cannot_be_loaded_fails_at_start(tmp_path: Path) -> None:
    path = tmp_path / "access.json"
    path.write_text('{"tokens": [{"sha256": "' + SHOP_TOKEN)  # broken JSON around a secret
    with pytest.raises(ConfigError) as caught:
        AccessFile(path, monotonic=ticking())
    message = str(caught.value)
    assert "METAAS_AUTH_TOKENS / --auth-tokens" in message
    assert "invalid JSON at line 1" in message
    assert SHOP_TOKEN not in message


def test_a_changed_access_file_is_reloaded(access_file: Path) -> None:
    authenticator = Authenticator(SecurityConfig(auth_tokens=access_file), monotonic=ticking())
    newcomer = "newcomer-token"
    refused(authenticator, FakeServicerContext.bearer(newcomer))
    write(access_file, access(tokens=[{"sha256": sha(newcomer), "apps": ["bank"]}]))
    assert authenticator.authenticate(FakeServicerContext.bearer(newcomer)).apps == frozenset(
        {"bank"}
    )


def test_a_token_removed_from_the_file_is_revoked(access_file: Path) -> None:
    authenticator = Authenticator(SecurityConfig(auth_tokens=access_file), monotonic=ticking())
    assert authenticator.authenticate(FakeServicerContext.bearer(SHOP_TOKEN))
    without = access(tokens=[t for t in GRANTS["tokens"] if t["sha256"] != sha(SHOP_TOKEN)])
    write(access_file, without)
    assert "unknown token" in refused(authenticator, FakeServicerContext.bearer(SHOP_TOKEN))
    assert authenticator.authenticate(FakeServicerContext.bearer(ADMIN_TOKEN)).admin


@pytest.mark.parametrize(
    "broken",
    [
        "{not json",
        json.dumps({"tokens": [{"sha256": "short", "apps": ["shop"]}]}),
        json.dumps([{"sha256": sha(SHOP_TOKEN), "apps": ["shop"]}]),
        json.dumps({"tokens": [{"sha256": sha("other"), "apps": ["shop"]}], "extra": 1}),
    ],
)
def test_a_broken_or_wrong_shaped_file_keeps_the_last_good_one(
    access_file: Path, broken: str
) -> None:
    access_list = AccessFile(access_file, monotonic=ticking())
    authenticator = Authenticator(SecurityConfig(auth_tokens=access_file), monotonic=ticking())
    write(access_file, broken)
    assert access_list.current().tokens.keys() == {sha(SHOP_TOKEN), sha(ADMIN_TOKEN)}
    assert access_list.reload_errors == 1
    assert access_list.current().tokens.keys() == {sha(SHOP_TOKEN), sha(ADMIN_TOKEN)}
    assert access_list.reload_errors == 1  # the same broken file is not re-read
    assert authenticator.authenticate(FakeServicerContext.bearer(SHOP_TOKEN)).apps == frozenset(
        {"shop"}
    )
    # Once fixed, the file is read again.
    write(access_file, access(tokens=[{"sha256": sha("fixed"), "apps": ["shop"]}]))
    assert access_list.current().tokens.keys() == {sha("fixed")}
    refused(authenticator, FakeServicerContext.bearer(SHOP_TOKEN))


def test_a_deleted_access_file_keeps_the_last_good_one(access_file: Path) -> None:
    access_list = AccessFile(access_file, monotonic=ticking())
    access_file.unlink()
    assert sha(SHOP_TOKEN) in access_list.current().tokens
    assert access_list.reload_errors == 1
