"""Tables that fit the terminal without cutting a value, fixed decimals and
integer counts, and CSV/TSV with full precision."""

from __future__ import annotations

import csv
import io
import math

import pytest

from metaas.server.cli._output import Column, Frame, Kind, delimited, numbers, table

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE = 60_000


def test_counts_stay_integers_and_other_values_have_fixed_decimals() -> None:
    assert numbers([3, 12, 2_661_880]) == ["3", "12", "2661880"]
    assert numbers([2_661_880.4, 12.5, 3.0]) == ["2661880.40", "12.50", "3.00"]
    assert numbers([0.05, 0.004]) == ["0.0500", "0.0040"]
    assert numbers([0.5, 0.25]) == ["0.500", "0.250"]
    assert numbers([math.nan, 1.0]) == ["-", "1.00"]
    assert numbers([1e300, 1.0]) == ["1e+300", "1.00"]
    assert all("e+" not in cell for cell in numbers([2_661_880.0, 123_456_789.123]))


def frame(groups: int, stats: int, minutes: int = 3) -> Frame:
    times = [NOW + m * MINUTE for _ in range(groups) for m in range(minutes)]
    statuses = [f"{g}xx" for g in range(groups) for _ in range(minutes)]
    dynos = [f"web.{g}" for g in range(groups) for _ in range(minutes)]
    columns = [
        Column("time", Kind.TIME, times),
        Column("status", Kind.TEXT, statuses),
        Column("dyno", Kind.TEXT, dynos),
        Column("count", Kind.NUMBER, [1000 + i for i in range(len(times))]),
    ]
    columns += [
        Column(f"p{s}", Kind.NUMBER, [123456.789 * (i + 1) for i in range(len(times))])
        for s in range(stats)
    ]
    return Frame(columns, keys=3)


def cells_of(text: str) -> set[str]:
    return {cell for line in text.splitlines() for cell in line.split()}


@pytest.mark.parametrize("width", [40, 80, 120])
def test_a_table_fits_the_width_and_cuts_no_value(width: int) -> None:
    wide = frame(groups=4, stats=8)
    text = table(wide, "app metric, {date}UTC", width)
    assert "…" not in text
    assert all(len(line) <= width for line in text.splitlines()[1:]), text
    whole = table(wide, "app metric, {date}UTC", None)
    # Every value of the full table is somewhere in the fitted one.
    assert cells_of(whole) - cells_of(text) <= {"2026-01-01"}


@pytest.mark.parametrize(
    ("width", "title", "first"),
    [
        (80, "app metric, 2026 UTC", "01-01 00:00  0xx"),
        (75, "app metric, 2026-01-01 UTC", "00:00  0xx"),
    ],
)
def test_a_narrow_table_writes_times_shorter_and_moves_the_rest_to_the_title(
    width: int, title: str, first: str
) -> None:
    text = table(frame(groups=2, stats=4), "app metric, {date}UTC", width)
    assert table(frame(groups=2, stats=4), "t", None).splitlines()[2].startswith("2026-01-01 00:00")
    lines = text.splitlines()
    assert lines[0] == title
    assert lines[1].split()[:4] == ["time", "status", "dyno", "count"]
    assert lines[2].startswith(first)
    assert "" not in lines  # narrower times made it fit: no wrapped block


def test_a_table_that_fits_keeps_full_times_and_one_header() -> None:
    text = table(frame(groups=2, stats=2), "app metric, {date}UTC", 120)
    lines = text.splitlines()
    assert lines[0] == "app metric, UTC"
    assert [line for line in lines if line.startswith("time")] == [lines[1]]
    assert lines[2].startswith("2026-01-01 00:00  0xx     web.0   1000  123456.79")
    assert len(lines) == 2 + 6  # one row per group and minute


def test_wrapped_blocks_repeat_the_time_and_labels() -> None:
    text = table(frame(groups=2, stats=8), "t {date}", 60)
    blocks = text.split("\n\n")
    assert len(blocks) > 1
    for block in blocks:
        header = next(line for line in block.splitlines() if line.startswith("time"))
        assert header.split()[:3] == ["time", "status", "dyno"]


def test_an_empty_label_reads_none_in_a_table_and_empty_in_csv() -> None:
    one = Frame(
        [
            Column("time", Kind.TIME, [NOW]),
            Column("status", Kind.TEXT, [""]),
            Column("count", Kind.NUMBER, [3]),
        ],
        keys=2,
    )
    assert table(one, "t", None).splitlines()[2] == "2026-01-01 00:00  <none>      3"
    assert delimited(one, ",").splitlines()[1] == "2026-01-01T00:00:00Z,,3"


@pytest.mark.parametrize("delimiter", [",", "\t"])
def test_csv_and_tsv_have_a_header_rfc3339_times_and_full_precision(delimiter: str) -> None:
    data = Frame(
        [
            Column("time", Kind.TIME, [NOW, NOW + MINUTE]),
            Column("status", Kind.TEXT, ["2xx", "5xx, or worse"]),
            Column("count", Kind.NUMBER, [3, 2_661_880]),
            Column("mean", Kind.NUMBER, [0.1 + 0.2, math.nan]),
        ],
        keys=2,
    )
    rows = list(csv.reader(io.StringIO(delimited(data, delimiter)), delimiter=delimiter))
    assert rows == [
        ["time", "status", "count", "mean"],
        ["2026-01-01T00:00:00Z", "2xx", "3", repr(0.1 + 0.2)],
        ["2026-01-01T00:01:00Z", "5xx, or worse", "2661880", ""],
    ]


def test_times_off_the_minute_show_their_seconds() -> None:
    off = Frame(
        [
            Column("time", Kind.TIME, [NOW + 24_954, NOW + MINUTE + 24_954]),
            Column("n", Kind.NUMBER, [1, 2]),
        ],
        keys=1,
    )
    assert table(off, "t {date}", None).splitlines()[2] == "2026-01-01 00:00:24  1"
    assert table(off, "t {date}", 14).splitlines()[:3] == [
        "t 2026-01-01 ",
        "time      n",
        "00:00:24  1",
    ]
