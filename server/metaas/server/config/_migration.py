"""Settings of a migration between two backends."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from metaas.server.config._declaration import (
    FRACTION,
    Accepts,
    ConfigError,
    Kind,
    above,
    at_least,
    between,
    setting,
    setting_of,
    validate,
)


def _optional_text(text: str) -> str | None:
    return text or None


@dataclass(frozen=True, slots=True)
class MigrationConfig:
    """Migration from ``--storage`` (old) to ``--migration-target`` (new),
    staged per app by the flags of ``--flags`` or ``--flags-provider``."""

    target_url: str | None = setting(
        None,
        "--migration-target",
        "METAAS_MIGRATION_TARGET",
        "Storage URL of the backend to migrate to; turns migration on.",
        parse=_optional_text,
    )
    flags_file: Path | None = setting(
        None,
        "--flags",
        "METAAS_FLAGS",
        "flagd flag file with migration-stage and migration-check-ratio (needs "
        "--migration-target).",
        kind=Kind.PATH,
    )
    flags_provider: str | None = setting(
        None,
        "--flags-provider",
        "METAAS_FLAGS_PROVIDER",
        "flagd-file (the default), flagd (a flagd service, FLAGD_* variables), or "
        "module:factory returning an OpenFeature provider (needs --migration-target).",
        parse=_optional_text,
    )
    shadow_timeout_s: float = setting(
        0.25,
        "--shadow-timeout-s",
        "METAAS_SHADOW_TIMEOUT_S",
        "Longest wait for a shadow read: it never delays an answer more.",
        kind=Kind.NUMBER,
        accepts=above(0, "seconds"),
    )
    shadow_workers: int = setting(
        0,
        "--shadow-workers",
        "METAAS_SHADOW_WORKERS",
        "Worker processes for shadow reads, so they use other cores than the serving "
        "loop (0: on the serving loop).",
        kind=Kind.INTEGER,
        accepts=between(0, 64, "an integer"),
    )
    relative_tolerance: float = setting(
        1e-9,
        "--compare-tolerance",
        "METAAS_COMPARE_TOLERANCE",
        "Relative difference below which values match.",
        kind=Kind.NUMBER,
        accepts=Accepts("a number in [0, 1)", lambda v: 0 <= v < 1),
    )
    # The newest minutes may differ while both backends catch up.
    ignore_newest_minutes: int = setting(
        2,
        "--compare-ignore-newest-minutes",
        "METAAS_COMPARE_IGNORE_NEWEST_MINUTES",
        "Newest minutes left out of comparisons.",
        kind=Kind.INTEGER,
        accepts=at_least(0, "minutes"),
    )
    window_s: float = setting(
        300.0,
        "--migration-window-s",
        "METAAS_MIGRATION_WINDOW_S",
        "Sliding window of the status and the guard rail.",
        kind=Kind.NUMBER,
        accepts=above(0, "seconds"),
    )
    guard_error_rate: float = setting(
        0.05,
        "--guard-error-rate",
        "METAAS_GUARD_ERROR_RATE",
        "In live and rampdown, the new backend's error rate over the window past which "
        "an app's reads fall back to the old one.",
        kind=Kind.NUMBER,
        accepts=FRACTION,
    )
    guard_mismatch_rate: float = setting(
        0.05,
        "--guard-mismatch-rate",
        "METAAS_GUARD_MISMATCH_RATE",
        "The mismatch rate over the window that does the same.",
        kind=Kind.NUMBER,
        accepts=FRACTION,
    )
    guard_min_samples: int = setting(
        20,
        "--guard-min-samples",
        "METAAS_GUARD_MIN_SAMPLES",
        "Reads or comparisons needed before the guard rail may trip.",
        kind=Kind.INTEGER,
        accepts=at_least(1, "an integer"),
    )

    def __post_init__(self) -> None:
        validate(self)
        target = setting_of(MigrationConfig, "target_url")
        for name in ("flags_file", "flags_provider"):
            value = getattr(self, name)
            if value is not None and self.target_url is None:
                raise ConfigError(
                    setting_of(MigrationConfig, name).label,
                    str(value),
                    f"it only with {target.label}, the backend its flags migrate to",
                )

    @property
    def enabled(self) -> bool:
        return self.target_url is not None
