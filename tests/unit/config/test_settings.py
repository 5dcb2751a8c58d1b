"""Settings: each declared once (flag, variable, default, help, what it
accepts), the CLI's options made from the declarations, and every refusal
naming the variable and the flag."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from opentelemetry.sdk.trace import TracerProvider

from metaas.server.cli._flag_file import check_flag_file
from metaas.server.cli._options import SettingOption
from metaas.server.cli.main import main
from metaas.server.cli.serve import serve
from metaas.server.config import (
    LOG_LEVEL,
    CodecConfig,
    ConfigError,
    IngestConfig,
    Kind,
    MigrationConfig,
    RetentionConfig,
    ServerConfig,
    Setting,
    Settings,
    ViewsConfig,
    declared,
    setting_of,
)
from metaas.server.storage.sqlite import SqliteConfig
from metaas.server.telemetry import from_environment
from tests.support import ROOT


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: ServerConfig(listen="localhost"), "METAAS_LISTEN"),
        (lambda: ServerConfig(listen="127.0.0.1:99999"), "METAAS_LISTEN"),
        (lambda: IngestConfig(flush_interval_s=0), "METAAS_FLUSH_INTERVAL_S"),
        (lambda: RetentionConfig(days=0), "METAAS_RETENTION_DAYS"),
        (lambda: SqliteConfig.from_url("sqlite://host/x.db"), "storage"),
        (lambda: SqliteConfig.from_url("sqlite:///x.db?synchronous=SOMETIMES"), "synchronous"),
        (lambda: SqliteConfig.from_url("sqlite:///x.db?cache=big"), "storage"),
        (lambda: from_environment({"OTEL_TRACES_EXPORTER": "zipkin"}), "OTEL_TRACES_EXPORTER"),
        (lambda: MigrationConfig(guard_error_rate=2.0), "METAAS_GUARD_ERROR_RATE"),
        (lambda: MigrationConfig(shadow_timeout_s=0), "METAAS_SHADOW_TIMEOUT_S"),
        (lambda: MigrationConfig(ignore_newest_minutes=-1), "--compare-ignore-newest-minutes"),
        (lambda: IngestConfig(hot_minutes=0), "IngestConfig.hot_minutes"),
        (lambda: CodecConfig(compression="lz4"), "METAAS_COMPRESSION"),
    ],
)
def test_bad_values_name_the_setting_and_what_it_accepts(build: object, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build()  # type: ignore[operator]
    assert named in str(caught.value)
    assert "expected" in str(caught.value)


def test_sqlite_urls() -> None:
    assert SqliteConfig.from_url("sqlite:///./data/metaas.db").path == Path("data/metaas.db")
    assert SqliteConfig.from_url("sqlite:////var/lib/m.db").path == Path("/var/lib/m.db")
    assert SqliteConfig.from_url("sqlite:///m.db?synchronous=full").synchronous == "FULL"


def test_loopback_detection() -> None:
    assert ServerConfig(listen="127.0.0.1:1").is_loopback
    assert ServerConfig(listen="[::1]:1").is_loopback
    assert ServerConfig(listen="localhost:1").is_loopback
    assert not ServerConfig(listen="0.0.0.0:1").is_loopback


def test_telemetry_from_standard_variables() -> None:
    off = from_environment({})
    assert isinstance(off.tracer_provider, TracerProvider)
    console = from_environment(
        {
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_SERVICE_NAME": "metaas-test",
        }
    )
    provider = console.tracer_provider
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] == "metaas-test"
    processors = provider._active_span_processor._span_processors
    assert len(processors) == 1
    console.shutdown()
    off.shutdown()
    disabled = from_environment({"OTEL_SDK_DISABLED": "true"})
    assert not isinstance(disabled.tracer_provider, TracerProvider)


# Flags, variables and defaults are a contract with every deployment: a
# change here is a breaking change, not a refactoring.
CONTRACT: dict[str, tuple[str, object]] = {
    "--storage": ("METAAS_STORAGE", "sqlite:///./data/metaas.db"),
    "--listen": ("METAAS_LISTEN", "127.0.0.1:50051"),
    "--reflection": ("METAAS_REFLECTION", True),
    "--shutdown-grace-s": ("METAAS_SHUTDOWN_GRACE_S", 10.0),
    "--wal-dir": ("METAAS_WAL_DIR", Path("data/wal")),
    "--flush-interval-s": ("METAAS_FLUSH_INTERVAL_S", 10.0),
    "--idempotency-window-s": ("METAAS_IDEMPOTENCY_WINDOW_S", 600.0),
    "--idempotency-max-bytes": ("METAAS_IDEMPOTENCY_MAX_BYTES", 268435456),
    "--max-backlog-bytes": ("METAAS_MAX_BACKLOG_BYTES", 1073741824),
    "--max-aggregate-bytes": ("METAAS_MAX_AGGREGATE_BYTES", 536870912),
    "--retention-days": ("METAAS_RETENTION_DAYS", 30),
    "--rollups-from": ("METAAS_ROLLUPS_FROM", None),
    "--views": ("METAAS_VIEWS", "status"),
    "--views-from": ("METAAS_VIEWS_FROM", None),
    "--max-inflight-requests": ("METAAS_MAX_INFLIGHT_REQUESTS", 512),
    "--max-inflight-per-caller": ("METAAS_MAX_INFLIGHT_PER_CALLER", 128),
    "--max-inflight-bytes": ("METAAS_MAX_INFLIGHT_BYTES", 268435456),
    "--stream-idle-timeout-s": ("METAAS_STREAM_IDLE_TIMEOUT_S", 30.0),
    "--compression": ("METAAS_COMPRESSION", "zstd"),
    "--compression-threshold-bytes": ("METAAS_COMPRESSION_THRESHOLD_BYTES", 409600),
    "--distribution-encoding": ("METAAS_DISTRIBUTION_ENCODING", 2),
    "--tls-cert": ("METAAS_TLS_CERT", None),
    "--tls-key": ("METAAS_TLS_KEY", None),
    "--tls-client-ca": ("METAAS_TLS_CLIENT_CA", None),
    "--auth-tokens": ("METAAS_AUTH_TOKENS", None),
    "--insecure": ("METAAS_INSECURE", False),
    "--migration-target": ("METAAS_MIGRATION_TARGET", None),
    "--flags": ("METAAS_FLAGS", None),
    "--flags-provider": ("METAAS_FLAGS_PROVIDER", None),
    "--shadow-timeout-s": ("METAAS_SHADOW_TIMEOUT_S", 0.25),
    "--shadow-workers": ("METAAS_SHADOW_WORKERS", 0),
    "--compare-tolerance": ("METAAS_COMPARE_TOLERANCE", 1e-9),
    "--compare-ignore-newest-minutes": ("METAAS_COMPARE_IGNORE_NEWEST_MINUTES", 2),
    "--migration-window-s": ("METAAS_MIGRATION_WINDOW_S", 300.0),
    "--guard-error-rate": ("METAAS_GUARD_ERROR_RATE", 0.05),
    "--guard-mismatch-rate": ("METAAS_GUARD_MISMATCH_RATE", 0.05),
    "--guard-min-samples": ("METAAS_GUARD_MIN_SAMPLES", 20),
    "--kafka-brokers": ("METAAS_KAFKA_BROKERS", None),
    "--kafka-topic": ("METAAS_KAFKA_TOPIC", "metaas.observations"),
    "--kafka-group": ("METAAS_KAFKA_GROUP", "metaas"),
    "--kafka-dead-letter-topic": (
        "METAAS_KAFKA_DEAD_LETTER_TOPIC",
        "metaas.observations.dead-letter",
    ),
    "--log-level": ("METAAS_LOG_LEVEL", "info"),
}
SETTINGS = [*declared(Settings), LOG_LEVEL]


def test_every_setting_has_a_flag_a_variable_help_and_its_contracted_default() -> None:
    assert {s.flag: (s.env, s.shown(s.default)) for s in SETTINGS} == CONTRACT
    for declared_setting in SETTINGS:
        flag, env = declared_setting.flag, declared_setting.env
        assert re.fullmatch(r"--[a-z][a-z0-9-]*", flag)
        assert env == "METAAS_" + flag.removeprefix("--").upper().replace("-", "_")
        assert declared_setting.help.endswith(".")
        assert declared_setting.label == f"{env} / {flag}"


def test_serve_takes_exactly_the_declared_settings() -> None:
    options = [p for p in serve.params if isinstance(p, click.Option) and p.name != "help"]
    assert [(o.opts[0], o.envvar) for o in options] == [(s.flag, s.env) for s in SETTINGS]
    assert all(isinstance(o, SettingOption) for o in options)
    reflection = next(o for o in options if o.name == "reflection")
    assert reflection.secondary_opts == ["--no-reflection"]


def _serve(*args: str) -> Result:
    return CliRunner().invoke(main, ["serve", *args])


def _one_line_naming(result: Result, setting: Setting) -> str:
    """The error line of a refused setting (exit status 2, no usage, no traceback)."""
    assert result.exit_code == 2, result.output
    (line,) = result.output.splitlines()
    assert line.startswith("Error: "), line
    assert setting.flag in line, line
    assert setting.env in line, line
    return line


def _refused(setting: Setting) -> str:
    """A value of the right type that ``setting`` does not accept."""
    assert setting.accepts is not None
    if setting.kind in (Kind.INTEGER, Kind.NUMBER, Kind.TIME):
        candidates: list[Any] = [-(10**13), -1, 0, 3, 10**13]
        if setting.kind is Kind.NUMBER:
            candidates += [-0.5, 1.5, 1e18]
        return str(next(v for v in candidates if not setting.accepts.test(v)))
    return next(v for v in ("lz4", "no port", "a b,a b", "a,a") if not setting.accepts.test(v))


NUMERIC = [
    s
    for s in SETTINGS
    if s.accepts is not None and s.kind in (Kind.INTEGER, Kind.NUMBER, Kind.TIME)
]


@pytest.mark.parametrize("checked_setting", NUMERIC, ids=lambda s: s.flag)
def test_a_number_out_of_range_names_the_flag_and_the_variable(
    checked_setting: Setting, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = _refused(checked_setting)
    if checked_setting.kind is Kind.TIME:
        value = "1969-12-31T23:00:00"
    line = _one_line_naming(_serve(checked_setting.flag, value), checked_setting)
    assert checked_setting.accepts is not None
    assert f"expected {checked_setting.accepts.description}" in line
    monkeypatch.setenv(checked_setting.env, value)
    assert _serve().output.splitlines() == [line]  # the same from the variable


@pytest.mark.parametrize(
    ("args", "named", "says"),
    [
        # bad choices
        (["--compression", "lz4"], "--compression", "'lz4' is not one of 'zstd', 'gzip'"),
        (["--log-level", "loud"], "--log-level", "'loud' is not one of"),
        (["--distribution-encoding", "3"], "--distribution-encoding", "expected 1 or 2"),
        (["--views", "status,status"], "--views", "at most 8 distinct label names"),
        # bad durations and times
        (["--shadow-timeout-s", "0"], "--shadow-timeout-s", "expected seconds > 0"),
        (["--shadow-timeout-s", "250ms"], "--shadow-timeout-s", "not a valid float"),
        (["--stream-idle-timeout-s", "1e6"], "--stream-idle-timeout-s", "(0, 86400]"),
        (["--rollups-from", "yesterday"], "--rollups-from", "is not a time: give now, now-1h"),
        (["--retention-days", "30d"], "--retention-days", "not a valid integer"),
        # bad addresses and files
        (["--listen", "50051"], "--listen", "expected HOST:PORT"),
        (["--auth-tokens", "/no/such/file"], "--auth-tokens", "a readable file"),
        (["--tls-key", "/no/such/key"], "--tls-key", "both or neither"),
        (["--max-inflight-bytes", "1024"], "--max-inflight-bytes", "the largest request"),
        # a migration setting without a migration
        (["--flags", "flags.json"], "--flags", "only with METAAS_MIGRATION_TARGET"),
        (["--flags-provider", "flagd"], "--flags-provider", "--migration-target"),
    ],
)
def test_each_kind_of_bad_value_names_the_flag_and_the_variable(
    args: list[str], named: str, says: str
) -> None:
    line = _one_line_naming(_serve(*args), next(s for s in SETTINGS if s.flag == named))
    assert says in line


def _files(tmp_path: Path) -> dict[str, Path]:
    files = {name: tmp_path / name for name in ("cert.pem", "key.pem", "ca.pem", "access")}
    for path in files.values():
        path.write_text("-")
    return files


def _every_setting_changed(tmp_path: Path) -> dict[Setting, tuple[list[str], str]]:
    """For each setting, a value other than its default: as arguments, and as
    its variable's text."""
    files = _files(tmp_path)
    values = {
        "--storage": f"sqlite:///{tmp_path / 'old.db'}",
        "--listen": "0.0.0.0:6000",
        "--shutdown-grace-s": "2.5",
        "--wal-dir": str(tmp_path / "wal"),
        "--flush-interval-s": "0.5",
        "--idempotency-window-s": "60",
        "--idempotency-max-bytes": "4096",
        "--max-backlog-bytes": "2048",
        "--max-aggregate-bytes": "70000",
        "--retention-days": "7",
        "--rollups-from": "2026-01-01T00:00:00Z",
        "--views": "status,dyno",
        "--views-from": "1767225600000",
        "--max-inflight-requests": "64",
        "--max-inflight-per-caller": "8",
        "--max-inflight-bytes": str(32 * 1024 * 1024),
        "--stream-idle-timeout-s": "5",
        "--compression": "gzip",
        "--compression-threshold-bytes": "1000",
        "--distribution-encoding": "1",
        "--tls-cert": str(files["cert.pem"]),
        "--tls-key": str(files["key.pem"]),
        "--tls-client-ca": str(files["ca.pem"]),
        "--auth-tokens": str(files["access"]),
        "--migration-target": f"sqlite:///{tmp_path / 'new.db'}",
        "--flags": str(tmp_path / "flags.json"),
        "--flags-provider": "flagd-file",
        "--shadow-timeout-s": "0.5",
        "--shadow-workers": "2",
        "--compare-tolerance": "1e-6",
        "--compare-ignore-newest-minutes": "3",
        "--migration-window-s": "60",
        "--guard-error-rate": "0.1",
        "--guard-mismatch-rate": "0.2",
        "--guard-min-samples": "5",
        "--kafka-brokers": "kafka-1:9092,kafka-2:9092",
        "--kafka-topic": "observations",
        "--kafka-group": "metaas-eu",
        "--kafka-dead-letter-topic": "observations.invalid",
        "--log-level": "debug",
    }
    changed = {s: ([s.flag, values[s.flag]], values[s.flag]) for s in SETTINGS if s.flag in values}
    switches = {"--reflection": (["--no-reflection"], "false"), "--insecure": (["--insecure"], "1")}
    changed |= {s: switches[s.flag] for s in SETTINGS if s.flag in switches}
    assert len(changed) == len(SETTINGS)
    return changed


def _parsed(args: list[str]) -> tuple[Settings, str]:
    context = serve.make_context("serve", list(args))
    return Settings.from_values(context.params), context.params[LOG_LEVEL.name]


def test_a_variable_and_its_flag_give_the_same_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    changed = _every_setting_changed(tmp_path)
    from_flags = _parsed([arg for args, _ in changed.values() for arg in args])
    for changed_setting, (_, text) in changed.items():
        monkeypatch.setenv(changed_setting.env, text)
    from_variables = _parsed([])
    assert from_variables == from_flags
    assert from_flags[0].views == ViewsConfig(("status", "dyno"), from_ms=1_767_225_600_000)
    assert from_flags[0].migration.flags_file == tmp_path / "flags.json"
    assert not from_flags[0].server.reflection
    assert from_flags[0].security.insecure
    monkeypatch.setenv("METAAS_SHADOW_WORKERS", "3")  # and the flag wins
    assert _parsed(["--shadow-workers", "4"])[0].migration.shadow_workers == 4


def _value_of(settings: Settings, flag: str) -> object:
    """The field ``flag`` sets in ``settings``."""
    if flag == "--storage":
        return settings.storage_url
    for component in dataclasses.fields(settings):
        config = getattr(settings, component.name)
        if not dataclasses.is_dataclass(config):
            continue
        for field in dataclasses.fields(config):
            with contextlib.suppress(KeyError):
                if setting_of(type(config), field.name).flag == flag:
                    return getattr(config, field.name)
    raise AssertionError(f"no field is set by {flag}")


def test_every_flag_sets_its_field(tmp_path: Path) -> None:
    changed = _every_setting_changed(tmp_path)
    settings, log_level = _parsed([arg for args, _ in changed.values() for arg in args])
    assert log_level != LOG_LEVEL.default
    for changed_setting in changed:
        if changed_setting is not LOG_LEVEL:
            value = _value_of(settings, changed_setting.flag)
            assert value != _value_of(Settings(), changed_setting.flag), changed_setting.flag


def test_flags_need_a_migration_target() -> None:
    with pytest.raises(ConfigError) as caught:
        MigrationConfig(flags_file=Path("flags.json"))
    assert caught.value.setting == "METAAS_FLAGS / --flags"
    assert "METAAS_MIGRATION_TARGET / --migration-target" in str(caught.value)
    assert MigrationConfig(target_url="sqlite:///new.db", flags_file=Path("f")).enabled


FLAGS = {
    "migration-stage": {
        "state": "ENABLED",
        "defaultVariant": "off",
        "variants": {"off": "off", "canary": "shadow"},
    },
    "migration-check-ratio": {
        "state": "ENABLED",
        "defaultVariant": "some",
        "variants": {"some": 0.05, "all": 1},
    },
}


def _flag_file(tmp_path: Path, text: str, name: str = "flags.json") -> MigrationConfig:
    path = tmp_path / name
    path.write_text(text)
    return MigrationConfig(target_url="sqlite:///new.db", flags_file=path)


def _with(flag: str, variant: str, value: object) -> str:
    flags = json.loads(json.dumps(FLAGS))
    flags[flag]["variants"][variant] = value
    return json.dumps({"flags": flags})


def test_a_good_flag_file_passes_the_start_up_check(tmp_path: Path) -> None:
    check_flag_file(_flag_file(tmp_path, json.dumps({"flags": FLAGS})))
    check_flag_file(_flag_file(tmp_path, '{"flags": {}}'))  # every app off
    # Another provider reads no file at start, so there is none to check.
    config = _flag_file(tmp_path, "not json")
    check_flag_file(MigrationConfig(config.target_url, config.flags_file, "flagd"))


@pytest.mark.parametrize(
    ("text", "name", "says"),
    [
        (
            _with("migration-stage", "canary", "shaddow"),
            "flags.json",
            "flag migration-stage, variant 'canary': invalid value 'shaddow'; "
            "expected off, dualwrite, shadow, live, rampdown or complete",
        ),
        (
            _with("migration-check-ratio", "all", 1.5),
            "flags.json",
            "flag migration-check-ratio, variant 'all': invalid value 1.5; "
            "expected a number from 0 to 1",
        ),
        (
            _with("migration-check-ratio", "all", "1"),
            "flags.json",
            "variant 'all': invalid value '1'",
        ),
        (
            _with("migration-check-ratio", "all", True),
            "flags.json",
            "variant 'all': invalid value True",
        ),
        ('{"flags": {"migration-stage": {"state": "ENABLED"', "flags.json", "in JSON (line 1"),
        ('["flags"]', "flags.json", 'an object with "flags"'),
        ('{"flags": {"migration-stage": "live"}}', "flags.json", 'migration-stage has "variants"'),
        ("flags:\n  migration-stage:\n    variants: {a: lve}\n", "flags.yaml", "'lve'"),
        ("flags: [", "flags.yaml", "in YAML"),
    ],
)
def test_a_bad_flag_file_is_refused_at_start_naming_the_setting_and_the_flag(
    tmp_path: Path, text: str, name: str, says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        check_flag_file(_flag_file(tmp_path, text, name))
    assert str(caught.value).startswith("METAAS_FLAGS / --flags")
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_unreadable_flag_file_is_refused_at_start(tmp_path: Path) -> None:
    config = MigrationConfig(target_url="sqlite:///new.db", flags_file=tmp_path / "none.json")
    with pytest.raises(ConfigError, match=r"--flags: .*a readable flagd flag file"):
        check_flag_file(config)


def _configuration_table() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith(("| `--", "| —"))
    ]


def _readme_default(cell: str) -> object:
    value = cell.strip("`")
    if value in ("—", "unset"):
        return None
    if value in ("on", "off"):
        return value == "on"
    try:
        return float(value)
    except ValueError:
        return value


def test_the_readme_lists_every_setting_with_its_variable_and_default() -> None:
    rows = _configuration_table()
    listed: dict[str, tuple[str, object]] = {}
    for flags, variables, default, _ in rows:
        flags = re.sub(r"/--no-[a-z-]+", "", flags)  # a switch's other half
        flag_names = re.findall(r"--[a-z][a-z0-9-]*(?=[`/])", flags)
        env_names = re.findall(r"METAAS_[A-Z_]+", variables)
        assert len(flag_names) == len(env_names), (flags, variables)
        for flag, env in zip(flag_names, env_names, strict=True):
            listed[flag] = (env, _readme_default(default))
    assert set(listed) == set(CONTRACT)
    for flag, (env, default) in listed.items():
        declared_env, declared_default = CONTRACT[flag]
        assert env == declared_env, flag
        if flag == "--flags-provider":
            assert default == "flagd-file"  # what no provider means
        elif isinstance(declared_default, int | float) and not isinstance(declared_default, bool):
            assert default == pytest.approx(declared_default), flag
        else:
            assert default == (
                str(declared_default) if isinstance(declared_default, Path) else declared_default
            ), flag
