"""Run every scenario beside its baseline, print the table, write the JSON.

    python -m bench.run [--duration 10] [--backends sqlite,cassandra,dynamodb]
                        [--only codec,backends,rss,shadow,tenant,kafka]
                        [--profile] [--out bench/results/latest.json]

Cassandra (127.0.0.1:9042), the DynamoDB emulator (127.0.0.1:8000) and
Kafka (127.0.0.1:9092) are used when they answer; ``scripts/bench.sh``
starts them first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from bench import codec, kafka, report, scenarios, tenant
from bench._figures import get as _get
from bench._process import BIN, ROOT, Child, metaas_server
from bench.ghz import available as ghz_available
from bench.profile import Profiler

T = TypeVar("T")
CASSANDRA = ("127.0.0.1", 9042)
DYNAMODB = ("127.0.0.1", 8000)
KAFKA = ("127.0.0.1", 9092)
AWS_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
# ``--only`` names: the codec; ingest, query and 7 days on each backend; RSS
# and shadow (embedded store); the tenant scenario of issue 13 on each backend;
# the Kafka ingest of issue 16 (embedded store).
SCENARIOS = ("codec", "backends", "rss", "shadow", "tenant", "kafka")


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Runner:
    def __init__(self, settings: scenarios.Settings) -> None:
        self.settings = settings
        self.results: dict[str, Any] = {"backends": {}, "baselines": {}, "errors": {}}

    def step(self, name: str, function: Callable[[], T]) -> T | None:
        """Run one scenario; a failure is recorded and the others still run."""
        _log(f"{name} ...")
        started = time.monotonic()
        try:
            value = function()
        except Exception as error:  # noqa: BLE001 - reported in the results, the run goes on
            self.results["errors"][name] = f"{type(error).__name__}: {error}"[:2000]
            _log(f"{name} FAILED: {error}")
            return None
        _log(f"{name} done in {time.monotonic() - started:.1f}s")
        return value

    def backend(self, name: str, storage: str, env: dict[str, str] | None = None) -> None:
        """Ingest, query and (except on the emulator) the 7-day query on one
        backend; on the embedded store also the baselines beside them."""
        settings = self.settings
        found: dict[str, Any] = {"storage": storage.split("?")[0]}
        self.results["backends"][name] = found
        server = metaas_server(
            name, storage, settings.work, flush_interval_s=scenarios.FLUSH_INTERVAL_S, env=env
        )
        started = self.step(f"{name}: start server", server.start)
        if started is None:
            return
        try:
            ingested = self.step(
                f"{name}: ingest", lambda: scenarios.ingest(settings, server, name)
            )
            if ingested is not None:
                found["ingest"] = ingested[0]
                if name == "sqlite":
                    self.results["baselines"]["ingest"] = self.step(
                        "baseline: ingest", lambda: scenarios.ingest_baseline(settings, ingested[1])
                    )
                    # The same samples in fewer, longer series: how much of
                    # the cost is per series rather than per sample.
                    wide = self.step(
                        f"{name}: ingest, 10 series per request",
                        lambda: scenarios.ingest(settings, server, name, series=10),
                    )
                    found["ingest_10_series"] = wide[0] if wide is not None else None
            queried = self.step(f"{name}: query", lambda: scenarios.query(settings, server, name))
            if queried is not None:
                found["query"] = queried
                if name == "sqlite":
                    self.results["baselines"]["query"] = self.step(
                        "baseline: query",
                        lambda: scenarios.query_baseline(
                            settings, queried["query"], Path(queried["response_file"])
                        ),
                    )
            if name != "dynamodb":
                found["long_range"] = self.step(
                    f"{name}: 7-day query", lambda: scenarios.long_range(settings, server, name)
                )
            found["server_memory_mib"] = server.memory_mib()
        finally:
            server.stop()
            self._server_errors(name, server)

    def _server_errors(self, name: str, server: Child) -> None:
        tail = server.log_tail(200)
        lines = [line for line in tail.splitlines() if "ERROR" in line or "Traceback" in line]
        if lines:
            self.results["backends"][name]["server_log_errors"] = lines[:10]


def _reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=2):
            return True
    except OSError:
        return False


def _dynamodb_schema(storage: str) -> bool:
    """Create the table (a no-op when it exists)."""
    subprocess.run(
        [str(BIN / "metaas"), "schema", "apply", "--storage", storage],
        env={**os.environ, **AWS_ENV},
        check=True,
        capture_output=True,
        timeout=120,
    )
    return True


def _storages(
    runner: Runner, backends: list[str], work: Path, *, needed: bool
) -> dict[str, tuple[str, dict[str, str] | None]]:
    """The storage URL (and server environment) of each selected backend that
    answers; the others are listed under ``skipped``."""
    found: dict[str, tuple[str, dict[str, str] | None]] = {}
    skipped = runner.results["skipped"]
    if "sqlite" in backends:
        found["sqlite"] = (f"sqlite:///{work / 'sqlite.db'}", None)
    if "cassandra" in backends and needed:
        if _reachable(CASSANDRA):
            found["cassandra"] = ("cassandra://127.0.0.1:9042/metaas_bench", None)
        else:
            skipped["cassandra"] = "not reachable on 127.0.0.1:9042"
    if "dynamodb" in backends and needed:
        storage = "dynamodb://metaas_bench?endpoint=http://127.0.0.1:8000&region=us-east-1"
        if not _reachable(DYNAMODB):
            skipped["dynamodb"] = "not reachable on 127.0.0.1:8000"
        elif runner.step("dynamodb: schema", lambda: _dynamodb_schema(storage)) is not None:
            found["dynamodb"] = (storage, AWS_ENV)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "--duration",
        type=float,
        default=float(os.environ.get("BENCH_DURATION_S", "10")),
        help="seconds of each measured load (BENCH_DURATION_S, default 10)",
    )
    parser.add_argument(
        "--backends",
        default=os.environ.get("BENCH_BACKENDS", "sqlite,cassandra,dynamodb"),
        help="comma-separated (BENCH_BACKENDS)",
    )
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios to run, of {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--profile", action="store_true", help="also profile with py-spy")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    if not ghz_available():
        _log("ghz is missing from .tools/bin: run scripts/bench.sh, which installs it")
        return 2
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    if unknown := only - set(SCENARIOS):
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}; of {', '.join(SCENARIOS)}")
    run_id = uuid.uuid4().hex[:8]
    work = ROOT / "data" / f"bench-{run_id}"
    work.mkdir(parents=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = scenarios.Settings(
        duration_s=args.duration,
        work=work,
        run_id=run_id,
        profiler=Profiler(args.out.parent, args.duration) if args.profile else None,
    )
    runner = Runner(settings)
    results = runner.results
    results |= {
        "run_id": run_id,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": args.duration,
        "machine": report.machine(),
        "skipped": {},
    }
    began = time.monotonic()
    try:
        storages = _storages(runner, backends, work, needed="backends" in only or "tenant" in only)
        if "codec" in only:
            results["codec"] = runner.step("codec", codec.run)
        for name, (storage, env) in storages.items():
            if "backends" in only:
                runner.backend(name, storage, env=env)
            if name != "sqlite":
                continue
            if "rss" in only:
                results["rss"] = runner.step("rss: 100,000 series", lambda: scenarios.rss(settings))
            if "shadow" in only:
                results["shadow"] = runner.step(
                    "shadow vs off, 1 shadow worker", lambda: scenarios.shadow(settings, workers=1)
                )
                results["shadow_inline"] = runner.step(
                    "shadow vs off, on the serving loop",
                    lambda: scenarios.shadow(settings, workers=0),
                )
            if "kafka" in only:
                if _reachable(KAFKA):
                    results["kafka"] = runner.step(
                        "kafka ingest, 1 then 2 consumers",
                        partial(kafka.run, settings, _get(results, "backends", "sqlite", "ingest")),
                    )
                else:
                    results["skipped"]["kafka"] = "not reachable on 127.0.0.1:9092"
        if "tenant" in only:
            results["tenant"] = {}
            for name, (storage, env) in storages.items():
                # Its own database file: the embedded store's figures do not
                # depend on what the other scenarios stored.
                where = f"sqlite:///{work / 'tenant.db'}" if name == "sqlite" else storage
                results["tenant"][name] = runner.step(
                    f"{name}: tenant", partial(tenant.run, settings, name, where, env)
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["elapsed_s"] = round(time.monotonic() - began, 1)
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    flat = report.headline(results)
    results = flat | {"targets": report.targets(flat)} | results
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(report.table(report.rows(results, flat)))
    shown = args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out
    print(f"\nwritten to {shown}")
    if results["errors"]:
        print(f"{len(results['errors'])} scenario(s) failed: {', '.join(results['errors'])}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
