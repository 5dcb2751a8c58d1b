"""Flags through OpenFeature: the flagd file provider's sticky percentages and
overrides, and another provider plugged in by configuration."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagResolutionDetails
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

from metaas.server.config import ConfigError
from metaas.server.migration.flags import open_flags
from metaas.server.migration.stages import Stage
from metaas.server.telemetry import noop


def provider() -> InMemoryProvider:
    """A factory named by METAAS_FLAGS_PROVIDER=tests.migration.test_flags:provider."""

    def by_app(flag: InMemoryFlag[str], context: EvaluationContext) -> FlagResolutionDetails[str]:
        stage = "live" if context.targeting_key == "vip" else "shadow"
        return FlagResolutionDetails(value=flag.variants[stage], variant=stage)

    return InMemoryProvider(
        {
            "migration-stage": InMemoryFlag(
                "shadow", {"shadow": "shadow", "live": "live"}, context_evaluator=by_app
            ),
            "migration-check-ratio": InMemoryFlag("half", {"half": 0.5}),
        }
    )


def test_another_provider_plugs_in_by_configuration() -> None:
    flags = open_flags(None, "tests.migration.test_flags:provider", noop())
    assert flags.stage("vip") is Stage.LIVE
    assert flags.stage("other") is Stage.SHADOW
    assert flags.check_ratio("other") == 0.5


def test_unknown_provider_fails_fast() -> None:
    with pytest.raises(ConfigError, match="METAAS_FLAGS_PROVIDER"):
        open_flags(None, "no.such.module:factory", noop())


def test_flagd_file_fractional_is_sticky_and_overrides_win(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_text("""{"flags": {
      "migration-stage": {"state": "ENABLED", "defaultVariant": "off",
        "variants": {"off": "off", "shadow": "shadow", "live": "live"},
        "targeting": {"if": [{"in": [{"var": "app"}, ["app-7"]]}, "live",
                             {"fractional": [["shadow", 30], ["off", 70]]}]}},
      "migration-check-ratio": {"state": "ENABLED", "defaultVariant": "r",
                                "variants": {"r": 2.5}}}}""")
    flags = open_flags(path, None, noop())
    apps = [f"app-{i}" for i in range(2000)]
    first = {app: flags.stage(app) for app in apps}
    assert first["app-7"] is Stage.LIVE
    shares = Counter(first.values())
    assert 0.25 < shares[Stage.SHADOW] / len(apps) < 0.35
    flags._stages.clear()  # type: ignore[attr-defined]  # evaluate again, not from the cache
    assert {app: flags.stage(app) for app in apps} == first  # sticky per app
    assert flags.check_ratio("any") == 0.0  # out of range: refused, not clamped to 1


def test_a_ratio_out_of_range_keeps_the_last_good_one(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"

    def write(ratio: float) -> None:
        path.write_text(
            json.dumps(
                {
                    "flags": {
                        "migration-stage": {
                            "state": "ENABLED",
                            "defaultVariant": "s",
                            "variants": {"s": "shadow"},
                        },
                        "migration-check-ratio": {
                            "state": "ENABLED",
                            "defaultVariant": "r",
                            "variants": {"r": ratio},
                        },
                    }
                }
            )
        )

    write(0.25)
    flags = open_flags(path, None, noop())
    assert flags.check_ratio("shop") == 0.25
    write(1.5)
    deadline = time.monotonic() + 10
    seen = []
    while time.monotonic() < deadline:
        flags._ratios.clear()  # type: ignore[attr-defined]  # evaluate again, not from the cache
        seen.append(flags._client.get_float_value("migration-check-ratio", -1.0))  # type: ignore[attr-defined]
        if seen[-1] == 1.5:
            break
        time.sleep(0.1)
    assert seen[-1] == 1.5, "the provider did not reload the file"
    assert flags.check_ratio("shop") == 0.25  # the last good ratio, not 1.0
