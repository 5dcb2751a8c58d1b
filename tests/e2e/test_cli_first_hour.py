"""The data commands (write, query, series) in a user's first hour: each
mistake is one line on stderr naming the flag and what it accepts, with no
traceback and the documented exit status (README, "Exit statuses"); the
outputs are readable at 80 and 120 columns and parse as CSV, TSV and JSON;
an empty answer says why it may be empty."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import METAAS, ROOT, ServerProcess, eventually

MINUTE = 60_000
NOW = time.time_ns() // 1_000_000
# Three whole minutes that ended before the tests started.
FIRST = NOW - NOW % MINUTE - 4 * MINUTE
GROUPS = [(status, dyno) for status in ("2xx", "5xx") for dyno in ("web.1", "web.2")]
# Samples per group and minute: 2xx/web.1 has 1 in the first minute, 2 in
# the second, 3 in the third; each later group one more per minute.
COUNTS = {(g, m): g + m + 1 for g in range(len(GROUPS)) for m in range(3)}
BIG = 2_661_880.5  # was printed as 2.66188e+06


def metaas(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [METAAS, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def one_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The one line a refused command prints, once its exit status is checked."""
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server holding app ``first``: router.latency_ms by status and dyno
    over three minutes (COUNTS), written with ``metaas write`` as CSV on stdin."""
    server = ServerProcess(tmp_path_factory.mktemp("first-hour")).start()
    rows = ["app,metric,time_ms,value,status,dyno"]
    for (g, m), count in COUNTS.items():
        status, dyno = GROUPS[g]
        rows += [
            f"first,router.latency_ms,{FIRST + m * MINUTE + i},{BIG + i},{status},{dyno}"
            for i in range(count)
        ]
    try:
        written = metaas("write", "--target", server.target, stdin="\n".join(rows) + "\n")
        assert written.returncode == 0, written.stderr
        assert f"wrote {sum(COUNTS.values())} samples in 4 series" in written.stdout

        def stored() -> None:
            body = json.loads(query(server, "--output", "json", "--stats", "count").stdout)
            assert sum(sum(s["stats"]["count"]) for s in body["series"]) == sum(COUNTS.values())

        eventually(stored)
        yield server
    finally:
        server.stop()


def query(
    server: ServerProcess, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return metaas(
        "query", "--target", server.target, "--app", "first", "--metric", "router.latency_ms",
        "--since", "10m", *args, env=env,
    )  # fmt: skip


# Each mistake of the first hour: the arguments after ``query`` or
# ``series``, the exit status, and what the one line must say.
QUERY_MISTAKES = [
    (["--step", "90s"], 2, ["'--step'", "'90s' is not a whole number of minutes", "1m, 5m, 1h"]),
    (["--start", "1795788000"], 2,
     ["'--start'", "this looks like seconds: give milliseconds", "RFC 3339"]),
    (["--start", "now-1h", "--end", "1795788000"], 2, ["'--end'", "this looks like seconds"]),
    (["--start", "yesterday"], 2, ["'--start'", "now-1h, RFC 3339", "Unix milliseconds"]),
    (["--start", "now", "--end", "now-1h"], 2, ["--end", "is not after --start"]),
    (["--since", "0m"], 2, ["--since", "above zero"]),
    (["--match", "status"], 2, ["'--match'", "'status' is not name=value"]),
    (["--match", "status=2xx,dyno"], 2, ["'--match'", "'dyno' is not name=value"]),
    (["--output", "xml"], 2, ["'--output'", "'table', 'csv', 'tsv', 'json'"]),
    (["--sinse", "1h"], 2, ["No such option '--sinse'", "'--since'"]),
    (["--stats", "count,p42"], 3,
     ["INVALID_ARGUMENT: --stats: unknown stat 'p42'", "expected count sum"]),
    (["--group-by", "status,not a label"], 3,
     ["--group-by: 'not a label' is not a valid label name"]),
    (["--match", "status="], 3, ["--match status", "label value is empty"]),
    (["--since", "30d"], 3,
     ["--step: the range holds 4320", "steps of 1m; at most", "larger step"]),
    (["--stats", ",".join(["p50"] * 201)], 3, ["--stats: has 201 stats; at most"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "status", "said"), QUERY_MISTAKES, ids=[" ".join(m[0])[:30] for m in QUERY_MISTAKES]
)
def test_a_query_mistake_is_one_line_naming_the_flag(
    served: ServerProcess, args: list[str], status: int, said: list[str]
) -> None:
    line = one_line(query(served, *args), status)
    for part in said:
        assert part in line, line
    assert not re.search(r"\b(start|end|step)_ms\b", line), line
    if status == 3:  # the server's times in RFC 3339, not milliseconds
        assert not re.search(r"\b\d{13}\b", line), line


def test_missing_or_unreachable_is_one_line_with_its_status(served: ServerProcess) -> None:
    line = one_line(metaas("query", "--target", served.target, "--metric", "m"), 2)
    assert "Missing option '--app'" in line
    line = one_line(metaas("series", "--target", served.target), 2)
    assert "Missing option '--app'" in line
    unreachable = metaas("query", "--target", "127.0.0.1:1", "--app", "a", "--metric", "m")
    line = one_line(unreachable, 4)
    assert "UNAVAILABLE: no server at 127.0.0.1:1 (--target / METAAS_TARGET)" in line


def test_the_step_help_shows_no_step_it_refuses() -> None:
    help_text = metaas("query", "--help").stdout
    assert "90s" not in help_text
    assert "a whole number of minutes such as 1m, 5m, 1h or 1d" in " ".join(help_text.split())


def test_write_reports_each_bad_line_once_with_its_number(
    served: ServerProcess, tmp_path: Path
) -> None:
    good = {"app": "first", "metric": "w", "time_ms": NOW, "value": 1}
    lines = [
        json.dumps(good),
        json.dumps({"app": "first", "metric": "w", "value": 1}),
        json.dumps({**good, "time_ms": None}),
        json.dumps({**good, "time_ms": NOW // 1000}),
        "[1, 2]",
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = metaas("write", "--target", served.target, str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "KeyError" not in result.stderr
    assert "TypeError" not in result.stderr
    assert result.stderr.splitlines() == [
        f'{path} line 2: lacks "time_ms": expected a sample {{"app", "metric", "time_ms", '
        '"value"} or a series {"app", "metric", "times_ms": [...], "values": [...]}, with '
        'optional "labels"',
        f'{path} line 3: "time_ms" is null: expected Unix milliseconds, an integer such as '
        "1767225600000",
        f'{path} line 4: "time_ms" is {NOW // 1000}: this looks like seconds: give '
        f"milliseconds ({NOW // 1000}000)",
        f"{path} line 5: a JSON list, not an object: expected a sample "
        '{"app", "metric", "time_ms", "value"} or a series {"app", "metric", "times_ms": '
        '[...], "values": [...]}, with optional "labels"',
        f"Error: {path}: 4 lines not accepted (above); nothing was written",
    ]
    assert result.stdout == ""


def test_write_reports_a_sample_the_server_refuses_by_its_line(served: ServerProcess) -> None:
    old = NOW - 40 * 86_400_000
    csv_text = f"app,metric,time_ms,value\nfirst,w,{NOW},1\nfirst,w,{old},2\n"
    result = metaas("write", "--target", served.target, "-", stdin=csv_text)
    line = one_line(result, 3)
    assert line.startswith(f"Error: INVALID_ARGUMENT: stdin line 3: time_ms {old} is older")
    assert line.endswith("; nothing was written")
    # Printed once, and not on the progress bar's line.
    assert result.stderr.count("older than the retention") == 1
    assert "older" not in result.stdout


def test_write_finds_csv_on_stdin_and_still_takes_format(served: ServerProcess) -> None:
    csv_text = f"app,metric,time_ms,value,dyno\nfirst,csv.in,{NOW},1,web.1\n"
    for args in ([], ["--format", "csv"]):
        result = metaas("write", "--target", served.target, *args, stdin=csv_text)
        assert result.returncode == 0, result.stderr
        assert "wrote 1 samples in 1 series" in result.stdout
    as_json = metaas("write", "--target", served.target, "--format", "jsonl", stdin=csv_text)
    assert as_json.returncode == 2
    assert "stdin line 1: not JSON" in as_json.stderr
    line = one_line(metaas("write", "--target", served.target, stdin="hello\n"), 2)
    assert "cannot tell the format from the first line" in line
    assert "--format" in line
    help_text = " ".join(metaas("write", "--help").stdout.split())
    assert "CSV: a header with app,metric,time_ms,value; any other column is a label" in help_text
    assert "JSON lines: one object per line" in help_text


@pytest.mark.parametrize("columns", ["80", "120"])
def test_a_group_by_over_two_labels_is_one_table_that_fits(
    served: ServerProcess, columns: str
) -> None:
    result = query(
        served, "--step", "1m", "--stats", "count,sum,min,max,mean,p50,p90,p99,q0.75",
        "--group-by", "status", "--group-by", "dyno", env={"COLUMNS": columns},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "…" not in text
    assert "e+" not in text
    title, *blocks = (
        text.rstrip("\n").split("\n", 1)[0],
        *text.rstrip("\n").split("\n", 1)[1].split("\n\n"),
    )
    assert title.startswith("first router.latency_ms, step 1m, ")
    assert title.endswith("served by sqlite")
    assert all(len(line) <= int(columns) for line in text.splitlines()[1:]), text
    # One table, wrapped into blocks at most, each repeating time and labels.
    assert len(blocks) <= 3
    stats = []
    for block in blocks:
        header, *rows = [line.split() for line in block.splitlines()]
        assert header[:3] == ["time", "status", "dyno"], block
        assert len(rows) == len(COUNTS), block
        stats += header[3:]
    assert stats == ["count", "sum", "min", "max", "mean", "p50", "p90", "p99", "q0.75"]
    header, *rows = [line.split() for line in blocks[0].splitlines()]
    counts = [row[len(row) - len(header) + header.index("count")] for row in rows]
    assert sorted(int(count) for count in counts) == sorted(COUNTS.values())
    assert all(re.fullmatch(r"\d+", count) for count in counts)
    assert f"{BIG:.2f}" in text


@pytest.mark.parametrize(("output", "delimiter"), [("csv", ","), ("tsv", "\t")])
def test_csv_and_tsv_hold_one_row_per_group_and_minute(
    served: ServerProcess, output: str, delimiter: str
) -> None:
    result = query(served, "--stats", "count,min", "--group-by", "status,dyno", "-o", output)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout), delimiter=delimiter))
    assert list(rows[0]) == ["time", "status", "dyno", "count", "min"]
    found = {
        (row["status"], row["dyno"], row["time"]): (int(row["count"]), float(row["min"]))
        for row in rows
    }
    for (g, m), count in COUNTS.items():
        minute = time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime((FIRST + m * MINUTE) / 1000))
        assert found[(*GROUPS[g], minute)] == (count, BIG)


def test_json_counts_are_integers(served: ServerProcess) -> None:
    for args in (["--json"], ["--output", "json"]):
        body = json.loads(query(served, "--stats", "count", "--group-by", "status", *args).stdout)
        counts = [c for s in body["series"] for c in s["stats"]["count"]]
        assert sum(counts) == sum(COUNTS.values())
        assert all(isinstance(c, int) for c in counts)


def test_relative_absolute_and_millisecond_times_read_the_same_range(
    served: ServerProcess,
) -> None:
    first, end = FIRST, FIRST + 3 * MINUTE
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(first / 1000))
    iso_end = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(end / 1000))
    answers = {
        query(served, "--stats", "count", "-o", "csv", *args).stdout
        for args in (
            ["--start", str(first), "--end", str(end)],
            ["--start", iso, "--end", iso_end],
            ["--start", iso.removesuffix("Z"), "--end", str(end)],  # UTC without an offset
        )
    }
    assert len(answers) == 1
    (answer,) = answers
    assert sum(int(row["count"]) for row in csv.DictReader(io.StringIO(answer))) == sum(
        COUNTS.values()
    )
    recent = query(served, "--stats", "count", "-o", "csv", "--start", "now-15m", "--end", "now")
    assert recent.stdout == answer


def test_series_lists_metrics_and_label_sets(served: ServerProcess) -> None:
    listed = metaas("series", "--target", served.target, "--app", "first", "--since", "15m")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("first: ")
    assert lines[1].split() == ["metric", "labels"]
    assert {tuple(line.split()) for line in lines[2:]} >= {
        ("router.latency_ms", f"dyno={dyno},status={status}") for status, dyno in GROUPS
    }
    body = json.loads(
        metaas(
            "series", "--target", served.target, "--app", "first", "--metric",
            "router.latency_ms", "-o", "json",
        ).stdout
    )  # fmt: skip
    assert body["metrics"] == ["router.latency_ms"]
    assert {(s["labels"]["status"], s["labels"]["dyno"]) for s in body["series"]} == set(GROUPS)
    rows = list(
        csv.DictReader(
            io.StringIO(
                metaas(
                    "series", "--target", served.target, "--app", "first", "--metric",
                    "router.latency_ms", "-o", "csv",
                ).stdout
            )
        )
    )  # fmt: skip
    assert {(row["metric"], row["status"], row["dyno"]) for row in rows} == {
        ("router.latency_ms", *group) for group in GROUPS
    }


@pytest.mark.parametrize(
    ("command", "hint"),
    [
        (["query", "--app", "nobody", "--metric", "m"], "nobody has no data from "),
        (
            ["query", "--app", "first", "--metric", "router.latency"],
            "first has no metric 'router.latency' from",
        ),
        (
            ["query", "--app", "first", "--metric", "router.latency_ms", "--match", "dyno=web.9"],
            "no series of router.latency_ms has --match dyno=web.9",
        ),
        (["series", "--app", "nobody"], "check the app's name"),
        (["series", "--app", "first", "--metric", "nope"], "first has other metrics: "),
    ],
)
def test_an_empty_answer_exits_0_with_a_hint_on_stderr(
    served: ServerProcess, command: list[str], hint: str
) -> None:
    result = metaas(*command, "--target", served.target)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    no_data, said = result.stderr.splitlines()
    assert no_data.startswith(("no data (served by sqlite)", "no series of "))
    assert said.startswith("hint: ")
    assert hint in said
    assert "flush interval (--flush-interval-s, 10 s by default)" in said
    if "first has no metric" in said:
        assert "router.latency_ms" in said
        assert "`metaas series --app first`" in said


def test_a_query_right_after_a_write_says_samples_wait_for_the_flush(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "slow", flush_interval_s=120).start()
    try:
        written = metaas(
            "write", "--target", server.target,
            stdin=json.dumps({"app": "fresh", "metric": "m", "time_ms": NOW, "value": 1}),
        )  # fmt: skip
        assert written.returncode == 0, written.stderr
        result = metaas("query", "--target", server.target, "--app", "fresh", "--metric", "m")
        assert result.returncode == 0
        assert result.stdout == ""
        assert result.stderr.splitlines()[0] == "no data (served by sqlite)"
        assert "samples become queryable within the server's flush interval" in result.stderr
    finally:
        server.stop()


def test_shell_completion_as_the_readme_documents_it() -> None:
    readme = (ROOT / "README.md").read_text()
    for shell in ("bash", "zsh", "fish"):
        assert f"_METAAS_COMPLETE={shell}_source metaas" in readme
        script = metaas(env={"_METAAS_COMPLETE": f"{shell}_source"})
        assert script.returncode == 0, script.stderr
        assert "_METAAS_COMPLETE" in script.stdout
    completed = metaas(
        env={"_METAAS_COMPLETE": "bash_complete", "COMP_WORDS": "metaas se", "COMP_CWORD": "1"}
    )
    assert {line.split(",")[1] for line in completed.stdout.splitlines()} == {"serve", "series"}


def test_the_readme_cli_section_documents_the_exit_statuses() -> None:
    readme = (ROOT / "README.md").read_text()
    cli = readme[readme.index("### CLI") : readme.index("\n## ", readme.index("### CLI"))]
    for status in range(5):
        assert f"\n| {status} | " in cli


def test_make_help_lists_every_target_once() -> None:
    makefile = (ROOT / "Makefile").read_text()
    phony = set(re.search(r"^\.PHONY: (.*)$", makefile, re.MULTILINE)[1].split())  # type: ignore[index]
    listed = subprocess.run(
        ["make", "--no-print-directory", "help"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert sorted(line.split()[0] for line in listed) == sorted(phony)
    assert all(len(line.split()) > 1 for line in listed)
