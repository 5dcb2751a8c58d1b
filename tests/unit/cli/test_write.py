"""Reading samples for ``metaas write``: each bad line told once with its
number and what was expected, the format found without --format, and the
server's refusals told by the line of the sample at fault."""

from __future__ import annotations

import json

import pytest

from metaas.server.cli._params import UsageError
from metaas.server.cli.write import (
    BadLine,
    Batch,
    SeriesId,
    _Samples,
    at_line,
    batches,
    detect,
    json_samples,
    read_csv,
    read_jsonl,
)

NOW = 1_767_225_600_000


def sample(**fields: object) -> str:
    return json.dumps({"app": "shop", "metric": "m", "time_ms": NOW, "value": 1.5, **fields})


def test_samples_and_series_are_read_from_json_lines() -> None:
    series = {"app": "shop", "metric": "m", "times_ms": [NOW, NOW + 1], "values": [1, 2]}
    lines = [sample(labels={"dyno": "web.1"}), "\n", json.dumps(series)]
    assert list(read_jsonl(lines)) == [
        ((("shop", "m", (("dyno", "web.1"),)), NOW, 1.5), 1),
        ((("shop", "m", ()), NOW, 1.0), 3),
        ((("shop", "m", ()), NOW + 1, 2.0), 3),
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"app": "x"}', 'lacks "metric": expected a sample {"app", "metric", "time_ms", "value"}'),
        (sample(time_ms="abc"), '"time_ms" is "abc": expected Unix milliseconds, an integer'),
        (sample(time_ms=1767225600), '"time_ms" is 1767225600: this looks like seconds: give'),
        (sample(value="x"), '"value" is "x": expected a finite number'),
        (sample(value=True), '"value" is true: expected a finite number'),
        (sample(labels=["web.1"]), '"labels" is ["web.1"]: expected an object of strings'),
        (sample(app=""), '"app" is "": expected a name such as "shop"'),
        ("[1, 2]", "a JSON list, not an object: expected a sample"),
        ("not json", "not JSON (Expecting value, column 1): expected a sample"),
        (
            '{"app": "a", "metric": "m", "times_ms": [1, 2], "values": [1]}',
            '"times_ms" has 2 items and "values" 1: they align one to one',
        ),
        ('{"app": "a", "metric": "m", "values": [1]}', 'a series needs "times_ms" and "values"'),
        (
            json.dumps({"app": "a", "metric": "m", "times_ms": [NOW, "x"], "values": [1, 2]}),
            '"times_ms[1]" is "x": expected Unix milliseconds',
        ),
    ],
)
def test_a_bad_json_line_says_what_was_expected(line: str, reason: str) -> None:
    with pytest.raises(ValueError, match=r"\S") as raised:
        json_samples(line)
    assert str(raised.value).startswith(reason)
    assert "KeyError" not in str(raised.value)
    assert "TypeError" not in str(raised.value)


def test_every_bad_line_is_reported_once_with_its_number() -> None:
    lines = [sample(), '{"app": "x"}', sample(), sample(value="x")]
    bad = [item for item in read_jsonl(lines) if isinstance(item, BadLine)]
    assert [line.number for line in bad] == [2, 4]


def test_csv_takes_other_columns_as_labels_and_numbers_its_lines() -> None:
    text = [
        "app,metric,time_ms,value,dyno\n",
        f"shop,m,{NOW},5,web.1\n",
        "\n",
        f"shop,m,{NOW},6,\n",
        f"shop,m,{NOW},7\n",
        "shop,m,x,7,web.2\n",
    ]
    assert list(read_csv(text, "in.csv")) == [
        ((("shop", "m", (("dyno", "web.1"),)), NOW, 5.0), 2),
        ((("shop", "m", ()), NOW, 6.0), 4),
        BadLine(5, "has 4 fields; the header has 5 (app,metric,time_ms,value,dyno)"),
        BadLine(
            6, '"time_ms" is "x": expected Unix milliseconds, an integer such as 1767225600000'
        ),
    ]


def test_a_csv_header_without_a_sample_s_columns_is_refused() -> None:
    with pytest.raises(UsageError) as raised:
        list(read_csv(["app,metric,time,value\n"], "in.csv"))
    assert raised.value.message == (
        "in.csv line 1: the CSV header lacks time_ms: expected a header "
        "app,metric,time_ms,value, any other column a label"
    )


@pytest.mark.parametrize(
    ("suffix", "first", "found"),
    [
        ("", "app,metric,time_ms,value\n", "csv"),
        ("", '{"app": "shop"}\n', "jsonl"),
        ("", "", "jsonl"),
        (".csv", '{"app": "shop"}', "csv"),
        (".jsonl", "app,metric", "jsonl"),
        ("", "hello\n", None),
    ],
)
def test_the_format_is_found_from_the_suffix_or_the_first_line(
    suffix: str, first: str, found: str | None
) -> None:
    assert detect(suffix, first) == found


def grouped(*sizes: int) -> dict[SeriesId, _Samples]:
    found: dict[SeriesId, _Samples] = {}
    line = 1
    for n, size in enumerate(sizes):
        lines = list(range(line, line + size))
        line += size
        found[("shop", f"m{n}", ())] = _Samples([NOW + i for i in range(size)], [1.0] * size, lines)
    return found


def test_batches_keep_the_line_of_each_sample() -> None:
    made = list(batches(grouped(3, 4), batch_size=5))
    assert [b.samples for b in made] == [5, 2]
    assert made[0].lines == [[1, 2, 3], [4, 5]]
    assert made[1].lines == [[6, 7]]
    assert [s.metric for s in made[1].series] == ["m1"]
    assert [list(s.times_ms) for s in made[1].series] == [[NOW + 2, NOW + 3]]
    long = list(batches(grouped(12), batch_size=5))
    assert [b.samples for b in long] == [5, 5, 2]
    assert long[2].lines == [[11, 12]]


def test_a_refused_sample_is_told_by_its_line() -> None:
    batch = Batch(next(batches(grouped(3, 4), batch_size=10)).series, [[1, 2, 3], [4, 5, 6, 7]])
    assert at_line("series[1].times_ms[2]", "5 is older than the retention", batch, "in") == (
        "in line 6: time_ms 5 is older than the retention"
    )
    assert at_line("series[0].values[0]", "must be a finite number, not nan", batch, "in") == (
        "in line 1: value must be a finite number, not nan"
    )
    assert at_line("series[1].metric", "must start with a letter", batch, "in") == (
        "in line 4 (and 3 more lines of this series): metric must start with a letter"
    )
    assert at_line('series[0].labels["dyno"]', "label value is empty", batch, "in") == (
        "in line 1 (and 2 more lines of this series): label 'dyno': label value is empty"
    )
    assert at_line("series", "has 7 samples; at most 5: split it", batch, "in") == (
        "in: has 7 samples; at most 5: split it (--batch-size 7: give a smaller one)"
    )
