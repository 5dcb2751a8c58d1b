"""Range queries: merge stored per-minute partials into step buckets."""

from metaas.server.query.engine import QueryEngine, RangeQuery, ResultGroup
from metaas.server.query.stats import DEFAULT_STATS, Stat, parse_stat

__all__ = ["DEFAULT_STATS", "QueryEngine", "RangeQuery", "ResultGroup", "Stat", "parse_stat"]
