"""The statistics a query can ask for."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from metaas.server.sketch import Distribution
from metaas.server.sketch.distribution import quantiles_of_many

_NAMED_QUANTILES: Final = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p999": 0.999}
_EXACT: Final = ("count", "sum", "min", "max", "mean")
# Used with fullmatch: ``$`` would let a trailing newline through. [0-9], not
# \d, which matches any Unicode digit (and float() reads those too).
_Q: Final = re.compile(r"q(0(\.[0-9]+)?|1(\.0+)?|\.[0-9]+)")
ACCEPTED: Final = "count sum min max mean p50 p90 p95 p99 p999, or q<fraction> such as q0.75"
DEFAULT_STATS: Final = ("count", "sum", "min", "max", "mean", "p50", "p90", "p99")


@dataclass(frozen=True, slots=True)
class Stat:
    name: str
    quantile: float | None = None  # None for the exact statistics


def parse_stat(name: str) -> Stat | None:
    """The stat named ``name``, or None when it is not one of ACCEPTED."""
    if name in _EXACT:
        return Stat(name)
    if name in _NAMED_QUANTILES:
        return Stat(name, _NAMED_QUANTILES[name])
    if _Q.fullmatch(name):
        return Stat(name, float(name[1:]))
    return None


def evaluate_many(
    stats: tuple[Stat, ...], distributions: list[Distribution]
) -> list[tuple[float, ...]]:
    """Each stat's values over many buckets (one tuple per stat); quantiles
    of all buckets are computed in one pass."""
    fractions = [s.quantile for s in stats if s.quantile is not None]
    quantiles = quantiles_of_many(distributions, fractions) if fractions else None
    columns: list[tuple[float, ...]] = []
    column = 0
    for stat in stats:
        if stat.quantile is not None:
            assert quantiles is not None
            columns.append(tuple(quantiles[:, column].tolist()))
            column += 1
        elif stat.name == "count":
            columns.append(tuple(float(d.count) for d in distributions))
        elif stat.name == "sum":
            columns.append(tuple(d.sum for d in distributions))
        elif stat.name == "min":
            columns.append(tuple(d.min for d in distributions))
        elif stat.name == "max":
            columns.append(tuple(d.max for d in distributions))
        else:
            columns.append(tuple(d.mean for d in distributions))
    return columns
