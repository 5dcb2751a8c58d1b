"""Flag files and stored-data probes for migration tests."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from metaas.server.storage.codec import decode_distribution

STAGES = ("off", "dualwrite", "shadow", "live", "rampdown", "complete")


def write_flags(path: Path, stages: dict[str, str], *, ratio: float = 1.0) -> None:
    """A flagd flag file: each app in ``stages`` at its stage, others off.
    Written to a temporary name and renamed, as an operator's tool would."""
    chain: list[object] = []
    for app, stage in sorted(stages.items()):
        chain += [{"in": [{"var": "app"}, [app]]}, stage]
    targeting = {"if": [*chain, "off"]} if chain else {}
    document = {
        "flags": {
            "migration-stage": {
                "state": "ENABLED",
                "variants": {s: s for s in STAGES},
                "defaultVariant": "off",
                "targeting": targeting,
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


def sqlite_count(db: Path, app: str, label: str) -> int:
    """Samples stored in a SQLite backend for series whose labels contain ``label``."""
    if not db.exists():
        return 0
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT labels, distribution FROM partials WHERE app = ?", (app,)
        ).fetchall()
    return sum(decode_distribution(blob).count for labels, blob in rows if label in labels)
