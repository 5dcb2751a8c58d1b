"""Parsing of the CLI's durations, steps, times and lists: what users of
promtool, influx and kubectl type is accepted, and a mistake is refused on
one line naming the flag and what it accepts."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from metaas.server.cli._params import (
    LABEL_PAIR,
    STEP,
    Command,
    Duration,
    Range,
    RelativeTime,
    Step,
    Timestamp,
    UsageError,
    format_duration,
    list_option,
    looks_like_seconds,
    parse_duration,
    resolve_range,
    rfc3339,
)

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000
MINUTE = 60_000


@pytest.mark.parametrize(
    ("text", "ms"),
    [("90s", 90_000), ("5m", 300_000), ("1h30m", 5_400_000), ("7d", 604_800_000), ("250ms", 250)],
)
def test_durations_read_and_print_back(text: str, ms: int) -> None:
    assert parse_duration(text) == ms
    assert parse_duration(format_duration(ms)) == ms


def test_a_duration_prints_in_its_shortest_spelling() -> None:
    assert format_duration(90_000) == "1m30s"
    assert format_duration(60_000) == "1m"
    assert format_duration(604_800_000) == "1w"


@pytest.mark.parametrize("text", ["", "5", "m", "1.5h", "-1h", "1 h", "5min"])
def test_a_duration_needs_a_number_and_a_unit(text: str) -> None:
    assert parse_duration(text) is None
    with pytest.raises(click.BadParameter, match=r"not a duration: give e\.g\. 30m"):
        Duration().convert(text, None, None)


@pytest.mark.parametrize(("text", "ms"), [("1m", MINUTE), ("5m", 5 * MINUTE), ("1h", HOUR)])
def test_a_step_is_a_whole_number_of_minutes(text: str, ms: int) -> None:
    assert STEP.convert(text, None, None) == ms


@pytest.mark.parametrize("text", ["90s", "30s", "0m", "1500ms"])
def test_a_step_the_server_refuses_is_refused_with_what_it_accepts(text: str) -> None:
    with pytest.raises(click.BadParameter) as raised:
        STEP.convert(text, None, None)
    assert "not a whole number of minutes: give 1m, 5m, 1h or 1d" in raised.value.message


def test_the_step_help_shows_only_steps_it_accepts() -> None:
    examples = [word.strip(",.") for word in Step.ACCEPTED.split() if word[0].isdigit()]
    assert examples
    for example in examples:
        STEP.convert(example, None, None)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("now", NOW),
        ("now-1h", NOW - HOUR),
        ("now - 90m", NOW - 90 * MINUTE),
        ("-1h30m", NOW - 90 * MINUTE),
        ("now+5m", NOW + 5 * MINUTE),
        ("2026-01-01T00:00:00Z", NOW),
        ("2026-01-01T01:00:00+01:00", NOW),
        ("2026-01-01 00:30", NOW + 30 * MINUTE),  # UTC without an offset
        ("2026-01-01", NOW),
        ("1767225600000", NOW),
    ],
)
def test_times_as_users_of_promtool_and_influx_write_them(text: str, ms: int) -> None:
    assert Timestamp(now_ms=lambda: NOW).convert(text, None, None) == ms


@pytest.mark.parametrize("seconds", ["1767225600", "1795788000", "999999999"])
def test_a_time_in_seconds_is_refused_as_seconds(seconds: str) -> None:
    with pytest.raises(click.BadParameter) as raised:
        Timestamp(now_ms=lambda: NOW).convert(seconds, None, None)
    message = raised.value.message
    assert "this looks like seconds: give milliseconds" in message
    assert f"({seconds}000)" in message
    assert "RFC 3339" in message


def test_seconds_are_told_from_milliseconds_by_their_size() -> None:
    assert looks_like_seconds(1_767_225_600)
    assert not looks_like_seconds(NOW)
    assert not looks_like_seconds(0)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("yesterday", "'yesterday' is not a time: give now, now-1h, RFC 3339"),
        ("2026-13-01", "'2026-13-01' is not a time: give now, now-1h, RFC 3339"),
        ("now-1", "'now-1': '1' is not a duration such as 1h"),
        ("now-1x", "'now-1x': '1x' is not a duration such as 1h"),
    ],
)
def test_a_time_that_is_none_of_these_says_what_is(text: str, said: str) -> None:
    with pytest.raises(click.BadParameter) as raised:
        Timestamp(now_ms=lambda: NOW).convert(text, None, None)
    assert said in raised.value.message


def test_rfc3339_is_utc_to_the_second_or_millisecond() -> None:
    assert rfc3339(NOW) == "2026-01-01T00:00:00Z"
    assert rfc3339(NOW + 5) == "2026-01-01T00:00:00.005Z"


def test_label_pairs_need_a_name_and_an_equals_sign() -> None:
    assert LABEL_PAIR.convert("dyno=web.1", None, None) == ("dyno", "web.1")
    assert LABEL_PAIR.convert("path=/a=b", None, None) == ("path", "/a=b")
    for bad in ["dyno", "=web.1"]:
        with pytest.raises(click.BadParameter, match=r"is not name=value, such as dyno=web\.1"):
            LABEL_PAIR.convert(bad, None, None)


@click.command(cls=Command)
@list_option("--match", "matchers", item=LABEL_PAIR, metavar="NAME=VALUE", help="Filter.")
@list_option("--group-by", item=click.STRING, metavar="LABEL", help="Group.")
@click.option("--step", type=STEP, default="1m")
def _listing(matchers: tuple[tuple[str, str], ...], group_by: tuple[str, ...], step: int) -> None:
    click.echo(repr((matchers, group_by)))


def test_lists_take_commas_and_repeated_flags_alike() -> None:
    by_commas = CliRunner().invoke(_listing, ["--match", "a=b,c=d", "--group-by", "x,y"])
    repeated = CliRunner().invoke(
        _listing, ["--match", "a=b", "--match", "c=d", "--group-by", "x", "--group-by", "y"]
    )
    assert by_commas.exit_code == repeated.exit_code == 0, by_commas.output
    assert by_commas.output == repeated.output
    assert by_commas.output.strip() == "((('a', 'b'), ('c', 'd')), ('x', 'y'))"


def test_a_usage_error_is_one_line_naming_the_flag_with_status_2() -> None:
    for args, named in [
        (["--match", "a=b,c"], "'--match': 'c' is not name=value"),
        (["--step", "90s"], "'--step': '90s' is not a whole number of minutes"),
        (["--sdep", "1m"], "No such option '--sdep'"),
    ]:
        result = CliRunner().invoke(_listing, args)
        assert result.exit_code == 2
        (line,) = result.output.splitlines()
        assert line.startswith("Error: "), line
        assert named in line, line


def test_a_range_ends_now_and_starts_aligned_unless_given() -> None:
    assert resolve_range(HOUR, None, None, NOW + 7, align_ms=5 * MINUTE) == Range(
        NOW - HOUR, NOW + 7
    )
    assert resolve_range(HOUR, NOW - 7, None, NOW) == Range(NOW - 7, NOW)
    # now-1h is --since 1h written another way, and aligned alike.
    start = Timestamp(now_ms=lambda: NOW + 7).convert("now-1h", None, None)
    assert isinstance(start, RelativeTime)
    assert resolve_range(HOUR, start, NOW + 7, NOW, align_ms=5 * MINUTE) == Range(
        NOW - HOUR, NOW + 7
    )
    assert resolve_range(HOUR, None, NOW, NOW + HOUR) == Range(NOW - HOUR, NOW)
    assert str(Range(NOW, NOW + HOUR + 5)) == "from 2026-01-01T00:00:00Z to 2026-01-01T01:00:00Z"


def test_a_range_that_ends_before_it_starts_is_refused_naming_both_flags() -> None:
    with pytest.raises(UsageError) as raised:
        resolve_range(HOUR, NOW, NOW - HOUR, NOW)
    assert raised.value.message == (
        "--end 2025-12-31T23:00:00Z is not after --start 2026-01-01T00:00:00Z: "
        "give an end after the start"
    )
    assert raised.value.exit_code == 2
    with pytest.raises(UsageError, match="--since 0ms: give a duration above zero"):
        resolve_range(0, None, None, NOW)
