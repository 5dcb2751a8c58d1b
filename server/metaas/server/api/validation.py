"""Validation of every request field, before anything is applied.

Each rule names the field at fault with a path such as
``series[2].times_ms[17]``; all of a request's violations are reported (up to
MAX_VIOLATIONS), and a request with any is rejected whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Final

import grpc
import numpy as np
import numpy.typing as npt

from metaas.server.api.errors import RequestError
from metaas.server.api.intake import batches_from_request
from metaas.server.config import LimitsConfig
from metaas.server.ingest import SeriesBatch
from metaas.server.model import MINUTE_MS, Labels
from metaas.server.query import DEFAULT_STATS, RangeQuery, Stat, parse_stat
from metaas.server.query.stats import ACCEPTED
from metaas.v1 import ingest_pb2, query_pb2

MAX_VIOLATIONS: Final = 20
# The largest magnitude a written value may have. A count is an int64, so a
# sum (stored or merged) adds fewer than 2**63 (about 9.2e18) values; each at
# most 1e289 in magnitude, the sum stays within 9.3e307, below the largest
# double (1.8e308): no sum of finite inputs overflows to infinity.
MAX_ABS_VALUE: Final = 1e289
# Names are checked with fullmatch: ``$`` would let a trailing newline through.
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*")
_LABEL_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


class Violations:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        if len(self.items) < MAX_VIOLATIONS:
            self.items.append((field, description))

    def raise_if_any(self, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> None:
        if self.items:
            field, description = self.items[0]
            more = f" (and {len(self.items) - 1} more)" if len(self.items) > 1 else ""
            raise RequestError(code, f"{field}: {description}{more}", self.items)


def _check_name(v: Violations, field: str, value: str, limits: LimitsConfig) -> bool:
    """Add the violation of a name, if any; True when the name is valid."""
    if not value:
        v.add(field, "is required")
    elif len(value) > limits.max_name_length:
        v.add(field, f"is {len(value)} characters; at most {limits.max_name_length}")
    elif not _NAME.fullmatch(value):
        v.add(field, "must start with a letter or digit and use only letters, digits and _ . : / -")
    else:
        return True
    return False


def _check_labels(
    v: Violations,
    field: str,
    labels: Iterable[tuple[str, str]],
    limits: LimitsConfig,
    valid: set[tuple[str, str]] | None = None,
) -> None:
    """Add the labels' violations. Pairs in ``valid`` were checked before
    and are skipped; pairs found valid are added to it."""
    items = list(labels)
    if len(items) > limits.max_labels:
        v.add(field, f"has {len(items)} labels; at most {limits.max_labels}")
        return
    for name, value in items:
        if valid is not None:
            if (name, value) in valid:
                continue
            if _label_ok(name, value, limits):
                valid.add((name, value))
                continue
        where = f'{field}["{name}"]' if len(name) <= limits.max_label_name_length else field
        if len(name) > limits.max_label_name_length:
            v.add(
                where,
                f"label name is {len(name)} characters; at most {limits.max_label_name_length}",
            )
        elif not _LABEL_NAME.fullmatch(name):
            v.add(where, "label name must start with a letter or _ and use letters, digits, _ . -")
        if not value:
            v.add(where, "label value is empty; leave the label out instead")
        elif len(value) > limits.max_label_value_length:
            v.add(
                where,
                f"label value is {len(value)} characters; at most {limits.max_label_value_length}",
            )
        elif _CONTROL.search(value):
            v.add(where, "label value contains control characters")


def _label_ok(name: str, value: str, limits: LimitsConfig) -> bool:
    return (
        len(name) <= limits.max_label_name_length
        and _LABEL_NAME.fullmatch(name) is not None
        and 0 < len(value) <= limits.max_label_value_length
        and _CONTROL.search(value) is None
    )


def _iso(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):  # beyond what a datetime holds
        return "out of range"


def validate_write(
    request: ingest_pb2.WriteRequest,
    *,
    now_ms: int,
    retention_ms: int,
    limits: LimitsConfig,
) -> tuple[list[SeriesBatch], int]:
    """The request's batches and sample count, or RequestError."""
    v = Violations()
    size = request.ByteSize()
    if size > limits.max_request_bytes:
        v.add("series", f"request is {size} bytes; at most {limits.max_request_bytes}: split it")
        v.raise_if_any(grpc.StatusCode.RESOURCE_EXHAUSTED)
    if len(request.series) > limits.max_series_per_request:
        v.add(
            "series", f"has {len(request.series)} series; at most {limits.max_series_per_request}"
        )
        v.raise_if_any(grpc.StatusCode.RESOURCE_EXHAUSTED)
    total = sum(len(s.times_ms) for s in request.series)
    if total > limits.max_samples_per_request:
        v.add("series", f"has {total} samples; at most {limits.max_samples_per_request}: split it")
        v.raise_if_any(grpc.StatusCode.RESOURCE_EXHAUSTED)
    if len(request.idempotency_key) > limits.max_idempotency_key_length:
        v.add("idempotency_key", f"is longer than {limits.max_idempotency_key_length} characters")
    if not request.series:
        v.add("series", "at least one series is required")
    oldest = now_ms - retention_ms
    newest = now_ms + limits.future_tolerance_ms
    batches = batches_from_request(request)
    # Names and label pairs repeat across a request's series: each distinct
    # one is checked once. Samples are checked over the whole request at
    # once, and series by series only when something is wrong.
    valid_names: set[str] = set()
    valid_labels: set[tuple[str, str]] = set()
    samples_ok = _all_samples_ok(batches, oldest, newest)
    for i, batch in enumerate(batches):
        series = batch.series
        for field, name in (("app", series.app), ("metric", series.metric)):
            if name not in valid_names and _check_name(v, f"series[{i}].{field}", name, limits):
                valid_names.add(name)
        _check_labels(v, f"series[{i}].labels", series.labels, limits, valid_labels)
        times, values = batch.times_ms, batch.values
        if times.size != values.size:
            v.add(f"series[{i}].values", f"has {values.size} values for {times.size} times_ms")
            continue
        if times.size == 0:
            v.add(f"series[{i}].times_ms", "at least one sample is required")
            continue
        if samples_ok:
            continue
        where = f"series[{i}]"
        for j in np.flatnonzero(~_in_range(values))[:3].tolist():
            if np.isfinite(values[j]):
                v.add(f"{where}.values[{j}]", f"{values[j]} exceeds {MAX_ABS_VALUE} in magnitude")
            else:
                v.add(f"{where}.values[{j}]", f"must be a finite number, not {values[j]}")
        for j in np.flatnonzero(times < oldest)[:3].tolist():
            v.add(
                f"{where}.times_ms[{j}]",
                f"{times[j]} is older than the retention ({retention_ms // 86_400_000} days, "
                f"before {_iso(oldest)})",
            )
        for j in np.flatnonzero(times > newest)[:3].tolist():
            v.add(
                f"{where}.times_ms[{j}]",
                f"{times[j]} ({_iso(int(times[j]))}) is more than "
                f"{limits.future_tolerance_ms // 60_000} minutes in the future",
            )
    v.raise_if_any()
    return batches, total


def _all_samples_ok(batches: list[SeriesBatch], oldest: int, newest: int) -> bool:
    """Every value finite and within MAX_ABS_VALUE, and every time within
    ``[oldest, newest]``, checked over all series at once (series whose
    lengths differ are left out)."""
    usable = [b for b in batches if b.times_ms.size == b.values.size and b.times_ms.size]
    if not usable:
        return True
    times = np.concatenate([b.times_ms for b in usable])
    values = np.concatenate([b.values for b in usable])
    return bool(_in_range(values).all() and times.min() >= oldest and times.max() <= newest)


def _in_range(values: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Whether each value is finite and at most MAX_ABS_VALUE in magnitude
    (NaN compares false)."""
    return np.abs(values) <= MAX_ABS_VALUE


def validate_query(request: query_pb2.QueryRangeRequest, *, limits: LimitsConfig) -> RangeQuery:
    v = Violations()
    _check_name(v, "app", request.app, limits)
    _check_name(v, "metric", request.metric, limits)
    _check_labels(v, "matchers", request.matchers.items(), limits)
    check_range(v, request.start_ms, request.end_ms)
    step = request.step_ms or MINUTE_MS
    buckets = 0
    if step < 0 or step % MINUTE_MS:
        v.add("step_ms", f"{request.step_ms} is not a positive multiple of 60000 (or 0 for 60000)")
    elif request.end_ms > request.start_ms:
        buckets = -(-(request.end_ms - request.start_ms) // step)
        if buckets > limits.max_points_per_series:
            v.add(
                "step_ms",
                f"the range holds {buckets} steps of {step} ms; at most "
                f"{limits.max_points_per_series}: use a larger step",
            )
    stats: list[Stat] = []
    if len(request.stats) > limits.max_stats:
        v.add("stats", f"has {len(request.stats)} stats; at most {limits.max_stats}")
    else:
        for k, name in enumerate(request.stats):
            stat = parse_stat(name)
            if stat is None:
                v.add(f"stats[{k}]", f"unknown stat {name!r}; expected {ACCEPTED}")
            else:
                stats.append(stat)
    if not request.stats:
        stats = [s for s in map(parse_stat, DEFAULT_STATS) if s is not None]
    if len(request.group_by) > limits.max_labels:
        v.add("group_by", f"has {len(request.group_by)} labels; at most {limits.max_labels}")
    seen: set[str] = set()
    for k, name in enumerate(request.group_by):
        if not _LABEL_NAME.fullmatch(name) or len(name) > limits.max_label_name_length:
            v.add(f"group_by[{k}]", f"{name!r} is not a valid label name")
        elif name in seen:
            v.add(f"group_by[{k}]", f"{name!r} is repeated")
        seen.add(name)
    v.raise_if_any()
    # Even one group would hold more than the answer may: refused unread.
    if buckets * len(stats) > limits.max_result_values:
        raise too_large(
            f"the range holds {buckets:,} steps of {step} ms x {len(stats)} stats = "
            f"{buckets * len(stats):,} values per group; at most {limits.max_result_values:,}",
            ("step_ms", "stats"),
        )
    matchers: Labels = tuple(sorted(request.matchers.items()))
    return RangeQuery(
        request.app,
        request.metric,
        matchers,
        request.start_ms,
        request.end_ms,
        step,
        tuple(stats),
        tuple(request.group_by),
        limits.max_result_values,
    )


# What each field can do to shrink an answer, for too_large's hint.
_SHRINK: Final = {
    "matchers": "narrow matchers",
    "group_by": "group by fewer labels",
    "step_ms": "use a larger step_ms",
    "stats": "ask for fewer stats",
}


def too_large(description: str, fields: Sequence[str]) -> RequestError:
    """RESOURCE_EXHAUSTED for a query whose answer would hold more values
    than LimitsConfig.max_result_values, naming ``fields`` (keys of _SHRINK)
    as those that shrink it."""
    hints = [_SHRINK[field] for field in fields]
    message = f"{description}: {', '.join(hints[:-1])} or {hints[-1]}"
    return RequestError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        message,
        [(field, f"{description}: {_SHRINK[field]}") for field in fields],
    )


def validate_list_series(request: query_pb2.ListSeriesRequest, *, limits: LimitsConfig) -> None:
    v = Violations()
    _check_name(v, "app", request.app, limits)
    if request.metric:
        _check_name(v, "metric", request.metric, limits)
    check_range(v, request.start_ms, request.end_ms)
    v.raise_if_any()


def check_range(v: Violations, start_ms: int, end_ms: int) -> None:
    if start_ms < 0:
        v.add("start_ms", f"{start_ms} is negative; expected Unix epoch milliseconds")
    if end_ms <= start_ms:
        v.add("end_ms", f"{end_ms} must be after start_ms ({start_ms})")
