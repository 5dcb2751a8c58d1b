"""The flagd flag file of the shadow scenario."""

from __future__ import annotations

import json
from pathlib import Path

STAGES = ("off", "dualwrite", "shadow", "live", "rampdown", "complete")


def write_flags(path: Path, stages: dict[str, str], *, ratio: float = 1.0) -> None:
    """Each app in ``stages`` at its stage (others off), every read of a
    shadowed app compared when ``ratio`` is 1.0. Written to a temporary name
    and renamed, so the server never reads half a file."""
    chain: list[object] = []
    for app, stage in sorted(stages.items()):
        chain += [{"in": [{"var": "app"}, [app]]}, stage]
    document = {
        "flags": {
            "migration-stage": {
                "state": "ENABLED",
                "variants": {s: s for s in STAGES},
                "defaultVariant": "off",
                "targeting": {"if": [*chain, "off"]} if chain else {},
            },
            "migration-check-ratio": {
                "state": "ENABLED",
                "variants": {"ratio": ratio},
                "defaultVariant": "ratio",
            },
        }
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=1))
    temporary.replace(path)
