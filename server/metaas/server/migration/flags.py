"""Per-app migration flags through OpenFeature.

Flags: ``migration-stage`` (string: off dualwrite shadow live rampdown
complete) and ``migration-check-ratio`` (number 0..1), evaluated with the app
as targeting key (and as the attribute ``app``). The default provider reads a
flagd flag-definition file (``METAAS_FLAGS``): ``fractional`` gives sticky
percentage splits, ``if``/``in`` per-app overrides; the file is re-read when
it changes, and a broken file keeps the last good flags. Any other
OpenFeature provider plugs in with ``METAAS_FLAGS_PROVIDER=module:factory``
(or ``flagd`` for a flagd service configured by the ``FLAGD_*`` variables).
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.provider import FeatureProvider

from metaas.server.config import ConfigError
from metaas.server.migration.stages import Stage, parse_stage
from metaas.server.telemetry import Telemetry

log = logging.getLogger(__name__)
STAGE_FLAG: Final = "migration-stage"
RATIO_FLAG: Final = "migration-check-ratio"
_DOMAIN: Final = "metaas"


class FlagSource(Protocol):
    def stage(self, app: str) -> Stage: ...

    def check_ratio(self, app: str) -> float: ...

    def describe(self) -> str:
        """The configured flags (the flag file's text) or the provider's name."""
        ...


@dataclass(frozen=True, slots=True)
class FixedFlags:
    """One stage and ratio for every app (tests, or no flag file)."""

    fixed_stage: Stage = Stage.OFF
    ratio: float = 0.0

    def stage(self, app: str) -> Stage:
        return self.fixed_stage

    def check_ratio(self, app: str) -> float:
        return self.ratio

    def describe(self) -> str:
        return f"every app: {self.fixed_stage} (check ratio {self.ratio})"


class OpenFeatureFlags:
    """Evaluates the flags per app, caching each answer for ``cache_s`` (one
    evaluation costs tens of microseconds; a query needs it once)."""

    def __init__(
        self,
        client: OpenFeatureClient,
        telemetry: Telemetry,
        *,
        flag_file: Path | None = None,
        cache_s: float = 1.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._flag_file = flag_file
        self._cache_s = cache_s
        self._now = now
        self._stages: dict[str, tuple[float, Stage]] = {}
        self._ratios: dict[str, tuple[float, float]] = {}
        self._last_good: dict[str, Stage] = {}
        self._last_good_ratio: dict[str, float] = {}
        self._errors = telemetry.meter.create_counter(
            "metaas.flags.errors", unit="{error}", description="Rejected flag files or values"
        )
        self._in_error = False
        self._lock = threading.Lock()
        client.add_handler(ProviderEvent.PROVIDER_ERROR, self._on_error)
        client.add_handler(ProviderEvent.PROVIDER_READY, self._on_recovered)
        client.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, self._on_recovered)

    def stage(self, app: str) -> Stage:
        now = self._now()
        cached = self._stages.get(app)
        if cached is not None and now - cached[0] < self._cache_s:
            return cached[1]
        context = EvaluationContext(targeting_key=app, attributes={"app": app})
        value = self._client.get_string_value(STAGE_FLAG, Stage.OFF.value, context)
        stage = parse_stage(value)
        if stage is None:
            # Keep serving as before rather than guess: an unknown value is
            # an operator's typo, not an instruction.
            stage = self._last_good.get(app, Stage.OFF)
            self._errors.add(1, {"flag": STAGE_FLAG})
            log.error(
                "flag %s is %r for app %s: not a stage; keeping %s", STAGE_FLAG, value, app, stage
            )
        self._last_good[app] = stage
        self._stages[app] = (now, stage)
        return stage

    def check_ratio(self, app: str) -> float:
        now = self._now()
        cached = self._ratios.get(app)
        if cached is not None and now - cached[0] < self._cache_s:
            return cached[1]
        context = EvaluationContext(targeting_key=app, attributes={"app": app})
        value = self._client.get_float_value(RATIO_FLAG, 0.0, context)
        ratio = value
        if not 0.0 <= value <= 1.0:  # also NaN
            # As for a stage: a ratio out of range is a typo, never clamped
            # into a guess; the app keeps its last good one (none: no checks).
            ratio = self._last_good_ratio.get(app, 0.0)
            self._errors.add(1, {"flag": RATIO_FLAG})
            log.error(
                "flag %s is %r for app %s: not a ratio from 0 to 1; keeping %s",
                RATIO_FLAG,
                value,
                app,
                ratio,
            )
        self._last_good_ratio[app] = ratio
        self._ratios[app] = (now, ratio)
        return ratio

    def describe(self) -> str:
        if self._flag_file is not None:
            try:
                return self._flag_file.read_text()
            except OSError as error:
                return f"flag file {self._flag_file}: {error}"
        return api.get_provider_metadata(_DOMAIN).name

    def _on_error(self, details: EventDetails) -> None:
        with self._lock:
            if self._in_error:
                return  # the provider reports the same broken file on every poll
            self._in_error = True
        self._errors.add(1, {"flag": "provider"})
        log.error("flags rejected, keeping the last good ones: %s", details.message)

    def _on_recovered(self, _details: EventDetails) -> None:
        with self._lock:
            self._in_error = False


class _Quieter(logging.Filter):
    """The flagd file watcher logs a full traceback on every poll while the
    file is broken; keep one line per distinct message per minute."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        now = time.monotonic()
        message = record.getMessage()
        if now - self._seen.get(message, -1e9) < 60:
            return False
        self._seen[message] = now
        return True


def open_flags(
    flag_file: Path | None, provider_spec: str | None, telemetry: Telemetry
) -> FlagSource:
    """The flag source for ``METAAS_FLAGS`` / ``METAAS_FLAGS_PROVIDER``."""
    provider = _provider(flag_file, provider_spec)
    if provider is None:
        return FixedFlags()
    logging.getLogger("openfeature.contrib").addFilter(_Quieter())
    api.set_provider_and_wait(provider, domain=_DOMAIN)
    return OpenFeatureFlags(api.get_client(_DOMAIN), telemetry, flag_file=flag_file)


def _provider(flag_file: Path | None, spec: str | None) -> FeatureProvider | None:
    from openfeature.contrib.provider.flagd import FlagdProvider
    from openfeature.contrib.provider.flagd.config import ResolverType

    if spec in (None, "", "flagd-file"):
        if flag_file is None:
            if spec == "flagd-file":
                raise ConfigError("METAAS_FLAGS / --flags", None, "a flag file for flagd-file")
            return None
        if not flag_file.is_file():
            raise ConfigError("METAAS_FLAGS / --flags", str(flag_file), "a flagd flag file")
        return FlagdProvider(
            resolver_type=ResolverType.FILE,
            offline_flag_source_path=str(flag_file),
            deadline_ms=1000,  # how often the file is checked for changes
        )
    if spec == "flagd":
        return FlagdProvider()
    module_name, _, factory_name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(
            "METAAS_FLAGS_PROVIDER / --flags-provider",
            spec,
            "flagd-file, flagd, or module:factory returning an OpenFeature provider",
        ) from error
    provider: FeatureProvider = factory()
    return provider
