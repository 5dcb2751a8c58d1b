"""``metaas query``'s answer as one wide frame: a column per group-by label,
counts kept as integers."""

from __future__ import annotations

from metaas.client import QueryResult, ResultSeries
from metaas.server.cli._output import Kind, table
from metaas.server.cli.query import as_json, frame_of

NOW = 1_767_225_600_000
MINUTE = 60_000


def result() -> QueryResult:
    def group(status: str, dyno: str, count: int) -> ResultSeries:
        return ResultSeries(
            {"status": status, "dyno": dyno},
            (NOW, NOW + MINUTE),
            {"count": (count, count + 1), "p99": (2_661_880.0, 12.5)},
        )

    return QueryResult(
        tuple(group(s, d, 3) for s in ("2xx", "5xx") for d in ("web.1", "web.2")), "sqlite"
    )


def test_a_group_by_over_two_labels_is_one_frame_with_a_column_per_label() -> None:
    frame = frame_of(result(), ["status", "dyno"])
    assert [c.name for c in frame.columns] == ["time", "status", "dyno", "count", "p99"]
    assert [c.kind for c in frame.columns] == [
        Kind.TIME, Kind.TEXT, Kind.TEXT, Kind.NUMBER, Kind.NUMBER,
    ]  # fmt: skip
    assert frame.keys == 3
    assert frame.rows == 8
    assert list(frame.columns[1].cells[:4]) == ["2xx", "2xx", "2xx", "2xx"]
    assert list(frame.columns[2].cells[:4]) == ["web.1", "web.1", "web.2", "web.2"]


def test_the_table_has_one_header_integer_counts_and_no_exponents() -> None:
    text = table(frame_of(result(), ["status", "dyno"]), "t", None)
    lines = text.splitlines()
    assert [line for line in lines if line.startswith("time")] == [lines[1]]
    assert lines[2].split() == ["2026-01-01", "00:00", "2xx", "web.1", "3", "2661880.00"]
    assert "3.0 " not in text
    assert "e+" not in text


def test_json_keeps_counts_as_integers() -> None:
    body = as_json(result())
    series = body["series"]
    assert isinstance(series, list)
    assert series[0]["stats"]["count"] == [3, 4]
    assert all(isinstance(n, int) for n in series[0]["stats"]["count"])
