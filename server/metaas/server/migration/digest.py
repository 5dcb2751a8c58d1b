"""What a GetMigrationStatus says, read for people: each app's stage (the
apps a flag file names, and every other app), recent mismatches grouped by
app, metric and kind of difference, and a repair hint where the new backend
lacks history. ``metaas migration status`` prints these and the HTML report
(report.py) draws them, so both say the same."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from metaas.server.migration.flags import RATIO_FLAG, STAGE_FLAG
from metaas.server.migration.stages import PLANS, Role, Stage, parse_stage
from metaas.v1 import migration_pb2

ALL_SERIES: Final = "(all series)"
# What a repair hint suggests: the default retention, the history dual writes lack.
REPAIR_SINCE: Final = "30d"


@dataclass(frozen=True, slots=True)
class AppStage:
    """One app's stage and check ratio, as the server evaluates its flags."""

    app: str
    stage: str
    check_ratio: float

    @classmethod
    def of(cls, status: migration_pb2.GetMigrationStatusResponse) -> AppStage:
        """From a status asked for one app."""
        return cls(status.app, status.stage, status.check_ratio)


def apps_named(flags: str) -> list[str]:
    """The apps a flagd flag file names in the targeting of the migration
    flags (``in`` lists and ``==`` on the ``app`` or ``targetingKey``
    variable); none when ``flags`` is not such a file (a provider's name)."""
    document = _flag_document(flags)
    found: set[str] = set()
    for name in (STAGE_FLAG, RATIO_FLAG):
        flag = document.get(name)
        if isinstance(flag, dict):
            _collect_apps(flag.get("targeting"), found)
    return sorted(found)


def apps_of(status: migration_pb2.GetMigrationStatusResponse) -> list[str]:
    """Every app the status mentions: named in the flag file, with a recent
    mismatch or an active fallback, or asked for."""
    apps = set(apps_named(status.flags))
    apps.update(m.app for m in status.recent_mismatches)
    apps.update(f.app for f in status.fallbacks)
    if status.app:
        apps.add(status.app)
    return sorted(apps)


def other_apps_stage(flags: str) -> str | None:
    """The stage of the apps the flag file does not name: its final ``else``
    (a variant or a ``fractional`` split), or the default variant; None when
    ``flags`` is not a flag file."""
    flag = _flag_document(flags).get(STAGE_FLAG)
    if not isinstance(flag, dict):
        return None
    variants = flag.get("variants")
    variants = variants if isinstance(variants, dict) else {}
    targeting = flag.get("targeting")
    fallback: object = flag.get("defaultVariant")
    if isinstance(targeting, dict) and isinstance(targeting.get("if"), list):
        branches = targeting["if"]
        if len(branches) % 2 == 1:
            fallback = branches[-1]
    if isinstance(fallback, dict) and isinstance(fallback.get("fractional"), list):
        split = [
            (str(entry[0]), float(entry[1]))
            for entry in fallback["fractional"]
            if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], int | float)
        ]
        total = sum(weight for _, weight in split) or 1.0
        return ", ".join(
            f"{variants.get(name, name)} {100 * weight / total:.0f}%" for name, weight in split
        )
    if isinstance(fallback, str):
        return str(variants.get(fallback, fallback))
    return None


def _flag_document(flags: str) -> dict[str, object]:
    try:
        document = json.loads(flags)
    except ValueError:
        return {}
    inner = document.get("flags") if isinstance(document, dict) else None
    return inner if isinstance(inner, dict) else {}


_APP_VARIABLES = ({"var": "app"}, {"var": "targetingKey"})


def _collect_apps(rule: object, found: set[str]) -> None:
    if isinstance(rule, list):
        for item in rule:
            _collect_apps(item, found)
        return
    if not isinstance(rule, dict):
        return
    for operator, operands in rule.items():
        if isinstance(operands, list) and len(operands) == 2:
            left, right = operands
            if operator == "in" and left in _APP_VARIABLES and isinstance(right, list):
                found.update(app for app in right if isinstance(app, str))
            elif operator in ("==", "===") and left in _APP_VARIABLES and isinstance(right, str):
                found.add(right)
            elif operator in ("==", "===") and right in _APP_VARIABLES and isinstance(left, str):
                found.add(left)
        _collect_apps(operands, found)


def show_labels(line: str) -> str:
    """A diff line with the empty label set (the whole metric, every series
    merged) shown as ``(all series)`` instead of ``{}``."""
    return ALL_SERIES + line[2:] if line.startswith("{}") else line


# compare.py's lines: "{labels} YYYY-MM-DD HH:MM: only in primary" or
# "{labels} YYYY-MM-DD HH:MM p99: primary=1 shadow=2".
_DIFF_LINE = re.compile(
    r"^(?P<labels>\{.*\}) \d{4}-\d\d-\d\d \d\d:\d\d"
    r"(?::\s*(?P<only>only in (?:primary|shadow))| (?P<stat>\S+): primary=)"
)


def _kind_of(line: str) -> tuple[str, str | None]:
    """The kind of difference a diff line reports, and its label set."""
    if line.startswith("shadow failed"):
        return "shadow read failed", None
    match = _DIFF_LINE.match(line)
    if match is None:
        return "other difference", None
    kind = match["only"] or f"{match['stat']} differs"
    labels = match["labels"]
    return kind, ALL_SERIES if labels == "{}" else labels


@dataclass(frozen=True, slots=True)
class MismatchGroup:
    """Recent mismatches of one app and metric with the same kinds of
    difference, counted as one."""

    app: str
    metric: str
    kind: str
    count: int
    stages: tuple[str, ...]
    first_ms: int
    last_ms: int
    series: tuple[str, ...]
    example: tuple[str, ...]
    new_lacks_history: bool


def group_mismatches(samples: Iterable[migration_pb2.MismatchSample]) -> list[MismatchGroup]:
    """Mismatches grouped by (app, metric, kinds of difference), the most
    frequent first; the example is the newest one's diff."""
    members: dict[tuple[str, str, str], list[migration_pb2.MismatchSample]] = defaultdict(list)
    for sample in samples:
        kinds = [_kind_of(line)[0] for line in sample.diff] or ["no diff recorded"]
        members[(sample.app, sample.metric, ", ".join(sorted(set(kinds))))].append(sample)
    groups = []
    for (app, metric, kind), found in members.items():
        newest = max(found, key=lambda m: m.at_ms)
        series = {
            labels
            for m in found
            for labels in (_kind_of(line)[1] for line in m.diff)
            if labels is not None
        }
        groups.append(
            MismatchGroup(
                app=app,
                metric=metric,
                kind=kind,
                count=len(found),
                stages=tuple(sorted({m.stage for m in found})),
                first_ms=min(m.at_ms for m in found),
                last_ms=newest.at_ms,
                series=tuple(sorted(series)),
                example=tuple(show_labels(line) for line in newest.diff),
                new_lacks_history=any(_new_lacks(m) for m in found),
            )
        )
    return sorted(groups, key=lambda g: (-g.count, -g.last_ms, g.app, g.metric))


def _new_lacks(sample: migration_pb2.MismatchSample) -> bool:
    """Whether the new backend answered without points the old one has."""
    stage = parse_stage(sample.stage)
    plan = PLANS.get(stage) if stage is not None else None
    if plan is None or plan.shadow is None:
        return False
    lacking = "only in primary" if plan.shadow is Role.NEW else "only in shadow"
    return any(_kind_of(line)[0] == lacking for line in sample.diff)


@dataclass(frozen=True, slots=True)
class RepairHint:
    """An app whose new backend lacks points the old one has, and what to run."""

    app: str
    mismatches: int
    command: str
    text: str


def repair_hints(
    groups: Iterable[MismatchGroup], stages: Sequence[AppStage] = ()
) -> list[RepairHint]:
    """A hint per app whose new backend lacks history: the data stored
    before dual writes began, which ``verify --repair`` copies over."""
    lacking: dict[str, int] = defaultdict(int)
    for group in groups:
        if group.new_lacks_history:
            lacking[group.app] += group.count
    stage_of = {s.app: s.stage for s in stages}
    hints = []
    for app, count in sorted(lacking.items()):
        command = f"metaas migration verify --app {app} --since {REPAIR_SINCE} --repair"
        text = (
            f"the new backend lacks history of app {app} ({count} recent "
            f"mismatch{'es' if count != 1 else ''} with points only on the old backend, "
            "such as data stored before dual writes began): copy it with"
        )
        if parse_stage(stage_of.get(app, "")) in (Stage.LIVE, Stage.RAMPDOWN, Stage.COMPLETE):
            # verify --repair copies from the side that serves reads.
            text = (
                f"{text} (after setting its stage back to shadow: repair copies from the "
                "backend that serves reads)"
            )
        hints.append(RepairHint(app, count, command, text))
    return hints
