"""The migration report: its readings of a status (stages, grouped
mismatches, repair hints, axis ticks), and the page from real traffic,
rendered in headless Chromium with migration off and on."""

from __future__ import annotations

import itertools
import math
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from metaas.client import Client, Series
from metaas.server.migration.digest import (
    apps_named,
    group_mismatches,
    other_apps_stage,
    repair_hints,
)
from metaas.server.migration.report import render, time_ticks, value_ticks
from metaas.v1 import migration_pb2
from tests.migration.support import write_flags
from tests.support import METAAS, ROOT, ServerProcess, eventually

MINUTE = 60_000
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def _readme_flag_example() -> str:
    """The flag file README.md shows in "Migrating between backends"."""
    section = (ROOT / "README.md").read_text().split("## Migrating between backends")[1]
    return section.split("```json\n")[1].split("```")[0]


README_FLAGS = _readme_flag_example()


def _mismatch(
    metric: str, stage: str, diff: list[str], *, at_ms: int = 0, app: str = "shop"
) -> migration_pb2.MismatchSample:
    return migration_pb2.MismatchSample(app=app, metric=metric, stage=stage, at_ms=at_ms, diff=diff)


def test_near_identical_mismatches_are_one_row_with_their_count() -> None:
    lacking = [
        _mismatch("latency", "shadow", [f"{{}} 2026-01-01 12:0{i % 5}: only in primary"], at_ms=i)
        for i in range(18)
    ]
    lacking.append(
        _mismatch("latency", "shadow", ["{dyno=web.1} 2026-01-01 12:00: only in primary"], at_ms=99)
    )
    differing = _mismatch("memory", "shadow", ["{} 2026-01-01 12:00 p99: primary=1 shadow=2"])
    groups = group_mismatches([*lacking, differing])
    assert [(g.app, g.metric, g.kind, g.count) for g in groups] == [
        ("shop", "latency", "only in primary", 19),
        ("shop", "memory", "p99 differs", 1),
    ]
    assert groups[0].series == ("(all series)", "{dyno=web.1}")
    assert groups[0].last_ms == 99
    assert groups[0].example == ("{dyno=web.1} 2026-01-01 12:00: only in primary",)
    assert groups[1].example == ("(all series) 2026-01-01 12:00 p99: primary=1 shadow=2",)


def test_a_repair_hint_only_where_the_new_backend_lacks_points() -> None:
    samples = [
        # shadow: the primary is old, so "only in primary" is history new lacks
        _mismatch("m", "shadow", ["{} 2026-01-01 12:00: only in primary"], app="a"),
        # live: the shadow is old
        _mismatch("m", "live", ["{} 2026-01-01 12:00: only in shadow"], app="b"),
        # shadow, but the new side has more: nothing to copy over
        _mismatch("m", "shadow", ["{} 2026-01-01 12:00: only in shadow"], app="c"),
        _mismatch("m", "shadow", ["{} 2026-01-01 12:00 count: primary=2 shadow=1"], app="d"),
        _mismatch("m", "shadow", ["shadow failed: timed out after 0.25s"], app="e"),
    ]
    hints = repair_hints(group_mismatches(samples))
    assert [h.app for h in hints] == ["a", "b"]
    assert hints[0].command == "metaas migration verify --app a --since 30d --repair"
    assert "stage back to shadow" not in hints[0].text


def test_apps_and_the_stage_of_every_other_app_come_from_the_flag_file() -> None:
    assert apps_named(README_FLAGS) == ["canary-app"]
    assert other_apps_stage(README_FLAGS) == "shadow 10%, dualwrite 90%"
    assert apps_named("every app: off (check ratio 0.0)") == []
    assert other_apps_stage("flagd") is None


@pytest.mark.parametrize("top", [1e-6, 0.37, 1.0, 3.3, 42.0, 99.9, 100.0, 1234.5, 7e6])
def test_value_ticks_are_round_distinct_and_cover_the_top(top: float) -> None:
    ticks, decimals = value_ticks(top)
    labels = [f"{t:.{decimals}f}" for t in ticks]
    assert len(set(labels)) == len(labels) <= 7
    assert ticks[0] == 0
    assert ticks[-1] >= top
    _assert_round_steps(labels)


@pytest.mark.parametrize("minutes", [1, 3, 7, 45, 180, 24 * 60 - 1, 3 * 24 * 60])
def test_time_ticks_are_on_round_minutes_and_distinct(minutes: int) -> None:
    start = int(datetime(2026, 1, 1, 12, 3, tzinfo=UTC).timestamp() * 1000)
    ticks = time_ticks(start, start + minutes * MINUTE)
    assert 1 <= len(ticks) <= 6
    assert all(start <= t <= start + minutes * MINUTE for t in ticks)
    steps = {b - a for a, b in itertools.pairwise(ticks)}
    assert len(steps) <= 1
    assert all(t % next(iter(steps), MINUTE) == 0 for t in ticks)


def test_with_migration_off_the_page_says_it_is_not_configured() -> None:
    status = migration_pb2.GetMigrationStatusResponse(migration_enabled=False, old_backend="sqlite")
    page = render(status, generated_at=datetime.now(UTC))
    assert "migration is not configured" in page.lower()
    assert "--migration-target" in page
    assert "No data" not in page
    assert "<svg" not in page


def test_report_of_an_unmigrated_server_in_chromium(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "server").start()
    report = tmp_path / "report.html"
    try:
        result = _report(server, report)
    finally:
        server.stop()
    assert "migration is not configured" in result.stderr
    dom = _dump_dom(report, tmp_path)
    text = dom.text()
    assert "The migration is not configured" in text
    assert "METAAS_MIGRATION_TARGET" in text
    assert "No data" not in text
    assert not dom.find("svg")
    assert not dom.find("table")


def test_report_renders_charts_from_real_data(tmp_path: Path) -> None:
    flags = tmp_path / "flags.json"
    write_flags(flags, {"shop": "off", "cart": "dualwrite"})
    server = ServerProcess(
        tmp_path / "server",
        storage=f"sqlite:///{tmp_path / 'old.db'}",
        extra=("--migration-target", f"sqlite:///{tmp_path / 'new.db'}", "--flags", str(flags)),
    ).start()
    report = tmp_path / "report.html"
    try:
        minute = time.time_ns() // 1_000_000 // MINUTE * MINUTE - 5 * MINUTE
        with Client(server.target) as client:
            client.write(
                [
                    Series("shop", "latency", [minute], [42.0], {"dyno": "web.1"}),
                    Series("shop", "memory", [minute], [512.0], {"dyno": "web.1"}),
                ]
            )
            time.sleep(0.5)  # stored on the old backend only
            write_flags(flags, {"shop": "shadow", "cart": "dualwrite"})
            eventually(lambda: _stage(client, "shadow"), timeout=5)
            for _ in range(12):
                client.query_range("shop", "latency", minute - MINUTE, minute + MINUTE)
            for _ in range(6):
                client.query_range(
                    "shop", "latency", minute - MINUTE, minute + MINUTE, group_by=["dyno"]
                )
            for _ in range(2):
                client.query_range("shop", "memory", minute - MINUTE, minute + MINUTE)
            eventually(lambda: _compared(client, 20), timeout=10)
        _report(server, report)
    finally:
        server.stop()

    page = report.read_text()
    assert page.count("<polyline") >= 4  # latency (old and new), errors, consistency
    assert page.count("<circle") >= 6 + 2 + 1  # data points: latency, errors, consistency
    assert "<script" not in page  # self-contained: nothing to fetch or run
    assert "http" not in page

    dom = _dump_dom(report, tmp_path)
    (stages,) = dom.find("table", "stages")
    assert _rows(stages) == [
        ["app", "stage", "reads served by", "shadow reads", "writes to", "check ratio", "fallback"],
        ["cart", "dualwrite", "old", "—", "old, new", "1", "—"],
        ["shop", "shadow", "old", "new", "old, new", "1", "—"],
        ["every other app", "off", "old", "—", "old", "", "—"],
    ]
    (mismatches,) = dom.find("table", "mismatches")
    rows = _rows(mismatches)
    # 20 mismatches, near-identical ones grouped: one row per metric.
    assert [row[:4] for row in rows[1:]] == [
        ["shop", "latency", "only in primary", "18"],
        ["shop", "memory", "only in primary", "2"],
    ]
    assert rows[1][6] == "(all series), {dyno=web.1}"
    assert "{}" not in mismatches.text()
    (hint,) = dom.find("p", "hint")
    assert "lacks history of app shop" in hint.text()
    assert "metaas migration verify --app shop --since 30d --repair" in hint.text()

    charts = dom.find("svg")
    assert len(charts) == 3
    for chart in charts:
        x_labels = [t.text() for t in chart.find("text", "x")]
        y_labels = [t.text() for t in chart.find("text", "y")]
        assert len(x_labels) >= 2, x_labels
        assert len(set(x_labels)) == len(x_labels), x_labels
        assert all(re.fullmatch(r"\d\d:\d\d", label) for label in x_labels), x_labels
        assert len(y_labels) >= 2, y_labels
        assert len(set(y_labels)) == len(y_labels), y_labels
        _assert_round_steps(y_labels)

    shot = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1000,1800", report.as_uri())
    image = Image.open(shot).convert("RGB")
    colors = image.getcolors(maxcolors=1 << 20) or []
    # Line colours of the charts: old (orange) and new (blue) backends.
    assert any(count > 50 and rgb == (0xD9, 0x82, 0x2B) for count, rgb in colors)
    assert any(count > 50 and rgb == (0x2B, 0x7B, 0xD9) for count, rgb in colors)


def _assert_round_steps(labels: list[str]) -> None:
    """Labels from 0 up, one step apart, the step 1, 2 or 5 times a power of
    ten, and no more decimals than the step needs."""
    values = [float(label) for label in labels]
    step = values[1] - values[0]
    assert values[0] == 0
    assert all(math.isclose(b - a, step, rel_tol=1e-6) for a, b in itertools.pairwise(values))
    mantissa = step / 10 ** math.floor(math.log10(step) + 1e-9)
    assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 5)), labels
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    assert all(label == f"{v:.{decimals}f}" for label, v in zip(labels, values, strict=True))


def _stage(client: Client, stage: str) -> None:
    assert client.migration_status("shop").stage == stage


def _compared(client: Client, count: int) -> None:
    assert client.migration_status().comparisons == count


def _report(server: ServerProcess, out: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [METAAS, "migration", "report", "--target", server.target, "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    return result


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: make install installs Debian's chromium"
    return subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )


@dataclass
class _Element:
    tag: str
    classes: tuple[str, ...]
    children: list[_Element | str] = field(default_factory=list)

    def text(self) -> str:
        parts = [c if isinstance(c, str) else c.text() for c in self.children]
        return " ".join(" ".join(parts).split())

    def find(self, tag: str, cls: str | None = None) -> list[_Element]:
        found = []
        for child in self.children:
            if isinstance(child, _Element):
                if child.tag == tag and (cls is None or cls in child.classes):
                    found.append(child)
                found += child.find(tag, cls)
        return found


class _Tree(HTMLParser):
    """The DOM Chromium serialises, as nested elements with their text."""

    _VOID = frozenset({"meta", "br", "img", "input", "link", "hr", "col", "source"})

    def __init__(self) -> None:
        super().__init__()
        self.root = _Element("document", ())
        self._open = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = tuple((dict(attrs).get("class") or "").split())
        element = _Element(tag, classes)
        self._open[-1].children.append(element)
        if tag not in self._VOID:
            self._open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = tuple((dict(attrs).get("class") or "").split())
        self._open[-1].children.append(_Element(tag, classes))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self._open) - 1, 0, -1):
            if self._open[depth].tag == tag:
                del self._open[depth:]
                return

    def handle_data(self, data: str) -> None:
        self._open[-1].children.append(data)


def _dump_dom(report: Path, tmp_path: Path) -> _Element:
    dumped = _chromium(tmp_path, "--dump-dom", report.as_uri()).stdout
    assert "<body" in dumped, dumped[:500]
    tree = _Tree()
    tree.feed(dumped)
    return tree.root


def _rows(table: _Element) -> list[list[str]]:
    return [
        [cell.text() for cell in row.children if isinstance(cell, _Element)]
        for row in table.find("tr")
    ]
