"""The server's refusals told in terms of the CLI's flags, on one line."""

from __future__ import annotations

import grpc
import pytest

from metaas.client import FieldViolation, MetaasError
from metaas.server.cli._client import QUERY_FLAGS, describe, flag_of, in_flags, request_errors
from metaas.server.cli._errors import Refused, Unavailable

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def refused(
    message: str, *violations: tuple[str, str], code: grpc.StatusCode = INVALID
) -> MetaasError:
    return MetaasError(code, message, tuple(FieldViolation(f, d) for f, d in violations))


@pytest.mark.parametrize(
    ("field", "flag"),
    [
        ("start_ms", "--start"),
        ("end_ms", "--end"),
        ("step_ms", "--step"),
        ("stats[1]", "--stats"),
        ("group_by[0]", "--group-by"),
        ('matchers["dyno"]', "--match dyno"),
        ("matchers", "--match"),
        ("app", "--app"),
        ("series[0].values", "series[0].values"),
    ],
)
def test_each_query_field_is_named_by_its_flag(field: str, flag: str) -> None:
    assert flag_of(field, QUERY_FLAGS) == flag


def test_milliseconds_read_as_times_and_durations() -> None:
    assert in_flags(
        "end_ms: 1795788000000 must be after start_ms (1795791600000)", QUERY_FLAGS
    ) == ("--end: 2026-11-27T14:00:00Z must be after --start (2026-11-27T15:00:00Z)")
    assert in_flags("the range holds 1993329 steps of 60000 ms", QUERY_FLAGS) == (
        "the range holds 1993329 steps of 1m"
    )


def test_a_refusal_names_the_flags_not_the_proto_fields() -> None:
    error = refused(
        "end_ms: 1795788000000 must be after start_ms (1795791600000) (and 1 more)",
        ("end_ms", "1795788000000 must be after start_ms (1795791600000)"),
        ("stats[0]", "unknown stat 'p42'; expected count sum"),
    )
    assert describe(error, QUERY_FLAGS) == (
        "INVALID_ARGUMENT: --end: 2026-11-27T14:00:00Z must be after --start "
        "(2026-11-27T15:00:00Z); --stats: unknown stat 'p42'; expected count sum"
    )


def test_an_answer_too_large_names_every_flag_that_shrinks_it_once() -> None:
    description = "the range holds 10,000 steps of 60000 ms x 300 stats = 3,000,000 values"
    error = refused(
        f"{description}: use a larger step_ms or ask for fewer stats",
        ("step_ms", f"{description}: use a larger step_ms"),
        ("stats", f"{description}: ask for fewer stats"),
        code=grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert describe(error, QUERY_FLAGS) == (
        "RESOURCE_EXHAUSTED: --step, --stats: the range holds 10,000 steps of 1m x 300 stats "
        "= 3,000,000 values: use a larger --step or ask for fewer stats"
    )


def test_a_request_refused_for_its_fields_exits_3_whatever_its_code() -> None:
    error = refused("x", ("step_ms", "x"), code=grpc.StatusCode.RESOURCE_EXHAUSTED)
    with pytest.raises(Refused) as raised, request_errors():
        raise error
    assert raised.value.exit_code == 3


def test_an_unreachable_server_exits_4_naming_the_target_and_its_flag() -> None:
    error = MetaasError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
    with pytest.raises(Unavailable) as raised, request_errors(QUERY_FLAGS, "127.0.0.1:1"):
        raise error
    assert raised.value.exit_code == 4
    assert raised.value.message == (
        "UNAVAILABLE: no server at 127.0.0.1:1 (--target / METAAS_TARGET): "
        "failed to connect to all addresses"
    )


def test_an_unknown_token_exits_3() -> None:
    with pytest.raises(Refused) as raised, request_errors():
        raise MetaasError(grpc.StatusCode.UNAUTHENTICATED, "unknown token")
    assert raised.value.message == "UNAUTHENTICATED: unknown token"
