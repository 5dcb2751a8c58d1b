"""Small helpers shared by the summaries: reading nested results and
formatting figures."""

from __future__ import annotations

from typing import Any


def get(tree: dict[str, Any], *path: str) -> Any:
    """``tree[path[0]][path[1]]...``, or None where a key is missing."""
    node: Any = tree
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"
