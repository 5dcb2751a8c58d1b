"""The Kafka ingest scenario's part of the summary (issue 16): its flat keys,
its target and its rows of the table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench._figures import get, num, ratio

Row = dict[str, Any]

TARGETS: list[tuple[str, str, float, str]] = [
    (
        "kafka_samples_per_s",
        ">=",
        1_000_000,
        "Kafka ingest >= 1,000,000 samples/s with one consumer, embedded store",
    ),
]


def _grpc(results: dict[str, Any]) -> Any:
    """The gRPC ingest figure the Kafka runs are compared with: the backends
    scenario's, or the one the Kafka scenario measured without it."""
    return get(results, "backends", "sqlite", "ingest", "samples_per_s") or get(
        results, "kafka", "grpc_ingest", "samples_per_s"
    )


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The scenario's flat keys (None where it did not run)."""
    grpc = _grpc(results)
    one = get(results, "kafka", "one_consumer", "samples_per_s")
    two = get(results, "kafka", "two_consumers", "samples_per_s")
    return {
        "kafka_samples_per_s": one,
        "kafka_vs_grpc_ingest": ratio(one, grpc),
        "kafka_2_consumers_samples_per_s": two,
        "kafka_2_consumers_vs_grpc_ingest": ratio(two, grpc),
        "kafka_2_consumers_vs_1": ratio(two, one),
        "kafka_grpc_ingest_samples_per_s": grpc,
    }


def rows(results: dict[str, Any], flat: dict[str, Any], met: Callable[..., str]) -> list[Row]:
    """One row per consumer count (the gRPC ingest figure as the baseline),
    then the start-up of each."""
    found = results.get("kafka") or {}
    out: list[Row] = []
    for key, consumers, prefix in (
        ("one_consumer", "1 consumer", "kafka"),
        ("two_consumers", "2 consumers in one group", "kafka_2_consumers"),
    ):
        if not found.get(key):
            continue
        first = key == "one_consumer"
        out.append(
            {
                "scenario": f"Kafka ingest, {found['partitions']} partitions, {consumers}, sqlite",
                "figure": "samples/s",
                "value": num(flat.get(f"{prefix}_samples_per_s")),
                "baseline": num(flat.get("kafka_grpc_ingest_samples_per_s")),
                "ratio": num(flat.get(f"{prefix}_vs_grpc_ingest"), 2),
                "target": ">= 1,000,000" if first else "",
                "met": met("kafka_samples_per_s") if first else "",
            }
        )
    for key, consumers in (("one_consumer", "1 consumer"), ("two_consumers", "2 consumers")):
        run = found.get(key)
        if run:
            out.append(
                {
                    "scenario": f"Kafka ingest, start to ready / first commit / all, {consumers}",
                    "figure": "s",
                    "value": f"{num(run['ready_s'], 2)} / {num(run['first_commit_s'], 2)} / "
                    f"{num(run['done_s'], 2)}",
                    "baseline": "",
                    "ratio": "",
                    "target": "",
                    "met": "",
                }
            )
    return out
