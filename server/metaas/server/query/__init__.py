"""Range queries: merge stored per-minute partials into step buckets."""

from metaas.server.query.answer import ResultGroup, ResultTooLarge
from metaas.server.query.engine import QueryEngine
from metaas.server.query.pacing import Pacer
from metaas.server.query.plan import RangeQuery
from metaas.server.query.stats import DEFAULT_STATS, Stat, parse_stat

__all__ = [
    "DEFAULT_STATS",
    "Pacer",
    "QueryEngine",
    "RangeQuery",
    "ResultGroup",
    "ResultTooLarge",
    "Stat",
    "parse_stat",
]
