"""``metaas demo``: realistic traffic for N apps."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import click
import numpy as np
from click.core import ParameterSource
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from metaas.client import Series
from metaas.server.cli._client import Connection, client_options
from metaas.server.cli._errors import server_errors

_STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")
_STATUS_WEIGHTS = (0.90, 0.04, 0.05, 0.01)


@click.command()
@client_options
@click.option("--apps", type=click.IntRange(1, 100_000), default=5, help="Number of apps.")
@click.option("--dynos", type=click.IntRange(1, 10_000), default=3, help="Web dynos per app.")
@click.option(
    "--minutes",
    type=click.IntRange(1, 43_200),
    default=30,
    help="Minutes of history to generate, ending now.",
)
@click.option(
    "--rpm", type=click.IntRange(1, 1_000_000), default=600, help="Requests per minute per dyno."
)
@click.option("--seed", type=int, default=7, help="Random seed, for reproducible traffic.")
def demo(
    connection: Connection,
    apps: int,
    dynos: int,
    minutes: int,
    rpm: int,
    seed: int,
) -> None:
    """Generate traffic: router latencies (lognormal, per status class and
    dyno), dyno memory and load, for apps demo-0 ... demo-N."""
    rng = np.random.default_rng(seed)
    now = time.time_ns() // 1_000_000
    start = now - minutes * 60_000
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    written = 0
    client = connection.open(timeout=60)
    with client, Progress(*columns) as progress:
        task = progress.add_task("apps", total=apps)
        for index in range(apps):
            app = f"demo-{index}"
            median_ms = float(rng.uniform(20, 200))
            with server_errors():
                for batch in _app_traffic(rng, app, dynos, start, now, rpm, median_ms):
                    written += client.write(batch)
            progress.advance(task)
    click.echo(f"wrote {written} samples for {apps} apps over {minutes} minutes")
    target = ""
    if click.get_current_context().get_parameter_source("target") is ParameterSource.COMMANDLINE:
        target = f" --target {connection.target}"
    click.echo("queryable within the server's flush interval (10 s by default), then try:")
    click.echo(
        f"  {_this_command()} query{target} --app demo-0 --metric router.latency_ms "
        f"--since {minutes}m --step 5m --stats count,p50,p99,max --group-by status"
    )


def _this_command() -> str:
    """How to run metaas again from this shell: ``metaas`` when that is this
    one (the virtualenv is activated), else its path, relative to the working
    directory when under it (``.venv/bin/metaas``)."""
    script = Path(sys.executable).with_name("metaas")
    on_path = shutil.which("metaas")
    if on_path is not None and script.exists() and Path(on_path).samefile(script):
        return "metaas"
    absolute = Path(os.path.abspath(script))
    return (
        str(absolute.relative_to(Path.cwd()))
        if absolute.is_relative_to(Path.cwd())
        else str(absolute)
    )


def _app_traffic(
    rng: np.random.Generator, app: str, dynos: int, start: int, end: int, rpm: int, median_ms: float
) -> list[list[Series]]:
    minutes = max(1, (end - start) // 60_000)
    batches: list[list[Series]] = []
    for dyno in (f"web.{d + 1}" for d in range(dynos)):
        n = rpm * minutes
        times = np.sort(rng.integers(start, end, n))
        status = rng.choice(len(_STATUS_CLASSES), n, p=_STATUS_WEIGHTS)
        # Errors are fast, redirects cheap, and a daily-ish wave moves the median.
        wave = 1.0 + 0.3 * np.sin((times - start) / 3_600_000 * 2 * np.pi)
        scale = np.array([1.0, 0.3, 0.5, 2.5])[status] * median_ms * wave
        latency = rng.lognormal(np.log(scale), 0.6)
        batch = [
            Series(
                app,
                "router.latency_ms",
                times[status == s].tolist(),
                latency[status == s].tolist(),
                {"dyno": dyno, "status": _STATUS_CLASSES[s]},
            )
            for s in range(len(_STATUS_CLASSES))
            if np.any(status == s)
        ]
        sample_times = np.arange(start - start % 20_000 + 20_000, end, 20_000)
        memory = 300 + np.cumsum(rng.normal(0.2, 2.0, sample_times.size))
        load = np.abs(rng.normal(0.4 * wave[: sample_times.size].mean(), 0.2, sample_times.size))
        batch.append(
            Series(app, "dyno.memory_mb", sample_times.tolist(), memory.tolist(), {"dyno": dyno})
        )
        batch.append(
            Series(app, "dyno.load_avg", sample_times.tolist(), load.tolist(), {"dyno": dyno})
        )
        batches.append(batch)
    return batches
