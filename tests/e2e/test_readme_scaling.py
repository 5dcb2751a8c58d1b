"""README.md's "Scaling out" example runs as written: a broker, two
replicas in one consumer group sharing one SQLite file, samples produced by
``metaas write --kafka-brokers``, and a query that counts them all.

So that runs never share a topic, a group or files, the test renames the
topic and the group, moves ``data/scaling`` into a temporary directory and
takes free ports; the commands are otherwise the README's."""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

from tests.e2e.test_readme import BLOCKS, SCALING_OUT, fresh_environment
from tests.support import ROOT, free_port

BLOCK = next(b for b in BLOCKS if b.section == SCALING_OUT and b.lang == "sh")


def test_the_scaling_out_example_stores_every_sample_once(tmp_path: Path) -> None:
    name = f"readme-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "scaling"
    script = (
        BLOCK.text.replace("metaas.observations", f"{name}.observations")
        .replace("--kafka-group metaas", f"--kafka-group {name}")
        .replace("data/scaling", str(data))
        .replace("50061", str(free_port()))
        .replace("50062", str(free_port()))
    )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=fresh_environment("127.0.0.1:1"),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = result.stdout + result.stderr
    try:
        assert result.returncode == 0, output
        assert "produced 600 samples in 6 series" in output, output
        # app-1's values are 1, 7, ..., 595: 100 of them, summing to 29,800.
        assert re.search(r"(?m)^\S+ \S+ +100 +29800\.00$", output), output
        owners = {
            log.stem: re.findall(r"took partition \S+/(\d+)", log.read_text())
            for log in data.glob("*.log")
        }
        assert sorted(owners) == ["a", "b"], owners
        assert all(owners.values()), f"each replica took partitions: {owners}"
        # The replica that joined first took all six, then handed some over.
        taken = {int(p) for partitions in owners.values() for p in partitions}
        assert taken == set(range(6)), owners
    finally:
        # The block stops its replicas; this is for one it left running.
        subprocess.run(["pkill", "-KILL", "-f", str(data)], check=False)
