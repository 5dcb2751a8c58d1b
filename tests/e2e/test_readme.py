"""The README's grpcurl examples run as written against a real server."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.support import ROOT, ServerProcess, eventually

BLOCK = re.compile(r"```sh\n(.*?)```", re.DOTALL)


def grpcurl_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [b for b in BLOCK.findall(text) if b.lstrip().startswith(("grpcurl", "NOW="))]


def run(block: str, server: ServerProcess) -> subprocess.CompletedProcess[str]:
    script = block.replace("127.0.0.1:50051", server.target)
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(autouse=True)
def _grpcurl_installed() -> None:
    # make test installs grpcurl into .tools/bin and puts it on PATH.
    assert shutil.which("grpcurl"), "grpcurl is missing: run make install"


def test_list_shows_services_without_proto_files(server: ServerProcess) -> None:
    listed = subprocess.run(
        ["grpcurl", "-plaintext", server.target, "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    assert {"metaas.v1.MetricsIngest", "metaas.v1.MetricsQuery", "grpc.health.v1.Health"} <= set(
        listed
    )


def test_every_grpcurl_example_runs(server: ServerProcess) -> None:
    blocks = grpcurl_blocks()
    methods = {m for b in blocks for m in re.findall(r"metaas\.v1\.\w+/\w+", b)}
    assert methods == {
        "metaas.v1.MetricsIngest/Write",
        "metaas.v1.MetricsIngest/WriteStream",
        "metaas.v1.MetricsQuery/QueryRange",
        "metaas.v1.MetricsQuery/ListSeries",
    }, "the README shows an example for every RPC"
    for block in blocks:
        result = run(block, server)
        if "# ERROR" in block:
            assert result.returncode != 0
            assert "InvalidArgument" in result.stderr
            assert "series[0].values" in result.stderr
        else:
            assert result.returncode == 0, (block, result.stderr)

    query = next(b for b in blocks if '"group_by": ["status"]' in b)

    def written_data_visible() -> None:
        assert '"count"' in run(query, server).stdout

    eventually(written_data_visible)
