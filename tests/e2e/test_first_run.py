"""The storage mistakes of a first run: ``metaas serve`` (and ``schema
apply``) stop with one line naming the setting and what it accepts or what
to check, no traceback, and the documented exit status: 2 for a setting
refused, 4 for a backend that cannot be reached."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from metaas.server.cli._errors import ExitStatus
from tests.backends.dynamodb import ENDPOINT, REGION
from tests.support import METAAS, eventually, free_port

STORAGE = "METAAS_STORAGE / --storage"
TARGET = "METAAS_MIGRATION_TARGET / --migration-target"
# No answer on port 1; a name under .invalid never resolves (RFC 2606).
UNREACHABLE = "cassandra://127.0.0.1:1/metaas?connect_timeout_ms=500"
UNRESOLVABLE = "cassandra://cassandra.metaas.invalid:9042/metaas?connect_timeout_ms=500"
DYNAMODB = f"dynamodb://metaas?endpoint={ENDPOINT}&region={REGION}"


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``metaas ARGS`` as a user starts it: in ``cwd``, the variables of
    this environment (and ``env``) only."""
    environ = {**os.environ, "OTEL_SDK_DISABLED": "true", **(env or {})}
    return subprocess.run(
        [METAAS, *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def serve(storage: str, cwd: Path, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    listen = f"127.0.0.1:{free_port()}"
    return run(
        "serve", "--listen", listen, "--storage", storage, "--wal-dir", "wal", *extra,
        cwd=cwd, env=env,
    )  # fmt: skip


def one_line(result: subprocess.CompletedProcess[str], status: ExitStatus, *named: str) -> str:
    """The error printed: one line on stderr, naming each of ``named``, with
    ``status``; nothing on stdout, and no traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("Error: "), line
    assert "Traceback" not in result.stderr
    assert not result.stdout.strip(), result.stdout
    for name in named:
        assert name in line, (name, line)
    assert result.returncode == status, (result.returncode, line)
    return line


@pytest.mark.parametrize("command", ["serve", "schema apply"])
def test_an_unreachable_cassandra_is_named_on_one_line(command: str, tmp_path: Path) -> None:
    if command == "serve":
        result = serve(UNREACHABLE, tmp_path)
    else:
        result = run("schema", "apply", "--storage", UNREACHABLE, cwd=tmp_path)
    line = one_line(result, ExitStatus.UNAVAILABLE, "127.0.0.1:1", STORAGE)
    assert "connection refused" in line
    assert "check that it is running" in line


@pytest.mark.parametrize("command", ["serve", "schema apply"])
def test_an_unresolvable_cassandra_host_is_named(command: str, tmp_path: Path) -> None:
    if command == "serve":
        result = serve(UNRESOLVABLE, tmp_path)
    else:
        result = run("schema", "apply", "--storage", UNRESOLVABLE, cwd=tmp_path)
    line = one_line(result, ExitStatus.UNAVAILABLE, "cassandra.metaas.invalid", STORAGE)
    assert "does not resolve" in line
    assert "UnresolvableContactPoints" not in line


def test_a_migration_target_names_its_own_setting(tmp_path: Path) -> None:
    result = serve("sqlite:///old.db", tmp_path, "--migration-target", UNREACHABLE)
    line = one_line(result, ExitStatus.UNAVAILABLE, "127.0.0.1:1", TARGET)
    assert STORAGE not in line


@pytest.mark.parametrize("command", ["serve", "schema apply"])
def test_dynamodb_without_credentials_says_which_variables_to_set(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    nowhere = {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    if command == "serve":
        result = serve(DYNAMODB, tmp_path, **nowhere)
    else:
        result = run("schema", "apply", "--storage", DYNAMODB, cwd=tmp_path, env=nowhere)
    line = one_line(
        result, ExitStatus.USAGE, STORAGE, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", ENDPOINT
    )
    assert "any values" in line  # an emulator's
    assert "Unable to locate credentials" not in line


@pytest.mark.parametrize("url", ["sqlite:/x.db", "sqlite:x.db"])
def test_an_ambiguous_sqlite_url_is_refused_with_both_forms(url: str, tmp_path: Path) -> None:
    line = one_line(serve(url, tmp_path), ExitStatus.USAGE, STORAGE, repr(url))
    assert "sqlite:///x.db (x.db in the working directory)" in line
    assert "sqlite:////x.db (/x.db)" in line
    assert not (tmp_path / "x.db").exists()


def test_a_sqlite_migration_target_names_its_own_setting(tmp_path: Path) -> None:
    result = serve("sqlite:///old.db", tmp_path, "--migration-target", "sqlite:/new.db")
    one_line(result, ExitStatus.USAGE, TARGET, "sqlite:///new.db", "sqlite:////new.db")


def test_the_start_up_log_shows_where_the_data_is(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    args = [
        METAAS, "serve", "--listen", listen, "--wal-dir", "wal",
        "--storage", "sqlite:///data/metaas.db",
        "--migration-target", f"sqlite:///{tmp_path}/new.db",
    ]  # fmt: skip
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            args,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OTEL_SDK_DISABLED": "true"},
        )
    try:

        def serving() -> str:
            assert server.poll() is None, log.read_text()
            lines = [line for line in log.read_text().splitlines() if "metaas serving on" in line]
            assert lines
            return lines[0]

        line = eventually(serving, timeout=30)
    finally:
        server.terminate()
        server.wait(30)
    # A relative path is the server's working directory's, shown absolute.
    where = tmp_path / "data" / "metaas.db"
    assert f"storage sqlite {where}, migrating to sqlite {tmp_path / 'new.db'}," in line
